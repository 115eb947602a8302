"""`spool show` for a person (fields, attempts with error, decision and traceback, result) and
`spool wait`'s text for a failed task (see spool.inspect.taskview, cli.produce.failure_text)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

from spool import Spool
from spool.cli import cli
from tests.conftest import TEST_CONFIG, run_burst, wait_until

Starter = Callable[..., subprocess.Popen[bytes]]


def invoke(spool_root: Path, *args: str) -> Result:
    argv = ["--root", str(spool_root), "--config", str(TEST_CONFIG), *args]
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def test_show_prints_the_fields_then_each_attempt_with_its_traceback_then_the_result(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path
) -> None:
    (task_id,) = app.enqueue_many(
        [{"task": "fail_until", "args": [str(tmp_path / "runs"), 1], "customer": "acme"}]
    )
    start_worker()
    wait_until(lambda: app.state_of(task_id) == "done")
    result = invoke(spool_root, "show", task_id)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        f"id        {task_id}",
        "task      fail_until",
        "queue     default",
        "state     done",
    ]
    assert 'extra     {"customer": "acme"}' in lines
    text = result.stdout
    first = text.index("attempt 1  worker ")
    assert text.index("  RuntimeError: run 1 fails on purpose", first) > first
    assert "  -> retry in 0.1" in text  # (backoff 0.1 s, jitter up to a quarter more)
    assert "    Traceback (most recent call last):\n" in text
    assert "tasks.py" in text and "run_handler" not in text
    assert text.index("attempt 2  worker ") > first
    assert text.rstrip().endswith("result\n  2")
    assert json.loads(invoke(spool_root, "show", "--json", task_id).stdout)["result"] == 2


def test_wait_on_a_failed_task_prints_its_error_and_traceback_as_text(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    task_id = app.enqueue("fail", args=["on purpose"], max_retries=0)
    start_worker()
    wait_until(lambda: app.state_of(task_id) == "failed")
    result = invoke(spool_root, "wait", task_id, "--timeout", "5")
    assert result.exit_code == 1
    assert result.stdout == ""
    err = result.stderr.splitlines()
    assert err[0] == f"Error: task {task_id} failed: RuntimeError: on purpose"
    assert err[1] == "Traceback (most recent call last):"
    assert err[-1] == "RuntimeError: on purpose"
    as_json = invoke(spool_root, "wait", task_id, "--json", "--timeout", "5")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["type"] == "RuntimeError"


def test_show_names_a_tasks_parent_follow_ups_and_batch(app: Spool, spool_root: Path) -> None:
    from tests.tasks import echo

    batch = app.batch([echo.s(1)], then=echo.s("all ended"))
    first, second = app.chain(echo.s("a"), echo.s("b"))
    assert f"then      {second} (not enqueued)" in invoke(spool_root, "show", first).stdout
    assert run_burst(spool_root).returncode == 0
    assert run_burst(spool_root).returncode == 0  # (the follow-ups, if the first left them)
    assert f"then      {second} (done)" in invoke(spool_root, "show", first).stdout
    assert f"parent    {first} (done)" in invoke(spool_root, "show", second).stdout
    member = invoke(spool_root, "show", batch.task_ids[0]).stdout
    assert f"batch     {batch.id} (1 of 1 ended)" in member
    assert "extra" not in member  # (the workflow fields are spool's, not the handler's)
