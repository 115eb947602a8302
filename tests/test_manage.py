"""Operator commands on tasks at rest: ls, retry, cancel, purge, pause/resume."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from spool import Spool
from spool.cli import cli
from tests.conftest import PROJECT_DIR, TEST_CONFIG, names, run_burst, spool_command, wait_until


@pytest.fixture
def spool(spool_root: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def run(*args: str) -> Result:
        argv = ["--root", str(spool_root), "--config", str(TEST_CONFIG), *args]
        return runner.invoke(cli, argv, catch_exceptions=False)

    return run


def test_ls_lists_waiting_tasks_in_run_order_with_their_fields(spool, app: Spool) -> None:
    low = app.enqueue("echo", args=[1])
    high = app.enqueue("add", args=[1, 2], priority=5)
    result = spool("ls", "incoming", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == [high, low]
    assert rows[0]["task"] == "add" and rows[0]["priority"] == 5 and rows[0]["attempts"] == 0
    assert set(rows[0]) >= {"queue", "state", "id", "task", "priority", "attempts", "age_seconds"}


def test_ls_failed_shows_the_error_and_filters_by_task(spool, app: Spool, spool_root: Path) -> None:
    app.enqueue("fail", args=["bad thing"], max_retries=0)
    app.enqueue("unreliable_no_retry")
    assert run_burst(spool_root).returncode == 0
    rows = json.loads(spool("ls", "failed", "--json", "--task", "fail").stdout)
    assert len(rows) == 1
    assert rows[0]["error_type"] == "RuntimeError" and rows[0]["error_message"] == "bad thing"
    text = spool("ls", "failed").stdout
    assert "RuntimeError: bad thing" in text and "ValueError" in text


def test_ls_filters_by_age(spool, app: Spool, spool_root: Path) -> None:
    app.enqueue("echo")
    assert run_burst(spool_root).returncode == 0
    [done] = names(spool_root / "default" / "done")
    os.utime(spool_root / "default" / "done" / done, (time.time() - 3600, time.time() - 3600))
    app.enqueue("echo")
    assert run_burst(spool_root).returncode == 0
    assert len(json.loads(spool("ls", "done", "--json", "--older-than", "30m").stdout)) == 1
    assert len(json.loads(spool("ls", "done", "--json", "--since", "30m").stdout)) == 1
    assert len(json.loads(spool("ls", "done", "--json").stdout)) == 2
    assert spool("ls", "done", "--since", "soon").exit_code == 2


def test_retry_moves_a_failed_task_back_with_attempts_reset_and_history_kept(
    spool, app: Spool, spool_root: Path
) -> None:
    task_id = app.enqueue("fail", max_retries=1)
    assert run_burst(spool_root).returncode == 0
    deadline = time.monotonic() + 10
    while app.state_of(task_id) != "failed" and time.monotonic() < deadline:
        run_burst(spool_root)
    assert app.state_of(task_id) == "failed"
    result = spool("retry", task_id)
    assert result.exit_code == 0, result.output
    shown = app.show(task_id)
    assert shown["state"] == "incoming" and shown["attempts"] == 0
    assert len(shown["history"]) == 2 and "error" not in shown


def test_retry_dry_run_changes_nothing(spool, app: Spool, spool_root: Path) -> None:
    task_id = app.enqueue("fail", max_retries=0)
    assert run_burst(spool_root).returncode == 0
    before = names(spool_root / "default" / "failed")
    result = spool("retry", "--all-failed", "--dry-run")
    assert result.exit_code == 0 and f"would retry {task_id}" in result.stdout
    assert names(spool_root / "default" / "failed") == before


def test_retry_all_failed_of_one_queue_or_one_task_leaves_the_others_in_failed(
    spool, app: Spool, spool_root: Path
) -> None:
    mail = [app.enqueue("fail", max_retries=0, queue="mail") for _ in range(3)]
    mail_other = app.enqueue(
        "fail_until", args=["/nonexistent/marker", 1], max_retries=0, queue="mail"
    )
    default = app.enqueue("fail", max_retries=0)
    assert run_burst(spool_root).returncode == 0
    assert {app.state_of(t) for t in [*mail, mail_other, default]} == {"failed"}
    result = spool("retry", "--all-failed", "--queue", "mail", "--task", "fail")
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.split()) == sorted(["retried"] * 3 + mail)
    assert "retried 3 task(s)" in result.stderr
    assert {app.state_of(t) for t in mail} == {"incoming"}
    assert app.state_of(mail_other) == "failed" and app.state_of(default) == "failed"
    result = spool("retry", "--all-failed")
    assert result.exit_code == 0 and "retried 2 task(s)" in result.stderr
    assert app.state_of(mail_other) == "incoming" and app.state_of(default) == "incoming"


def test_retry_of_a_task_that_is_not_failed_is_refused(spool, app: Spool) -> None:
    task_id = app.enqueue("echo")
    result = spool("retry", task_id)
    assert result.exit_code == 1 and "not failed" in result.stderr


def test_a_retried_task_holds_its_unique_key_again(spool, app: Spool, spool_root: Path) -> None:
    task_id = app.enqueue("fail", max_retries=0, unique_key="report-7")
    assert run_burst(spool_root).returncode == 0
    assert app.state_of(task_id) == "failed"  # (its key was released)
    assert spool("retry", task_id).exit_code == 0
    assert app.enqueue("echo", unique_key="report-7") == task_id  # pending again: it holds it
    assert len(names(spool_root / "default" / "incoming")) == 1


def test_a_retry_is_refused_while_another_task_holds_the_unique_key(
    spool, app: Spool, spool_root: Path
) -> None:
    first = app.enqueue("fail", max_retries=0, unique_key="report-7")
    assert run_burst(spool_root).returncode == 0
    second = app.enqueue("echo", unique_key="report-7")
    assert second != first
    result = spool("retry", first)
    assert result.exit_code == 1
    assert f"task {second} holds its unique key 'report-7'" in result.stderr
    assert app.state_of(first) == "failed" and app.state_of(second) == "incoming"
    assert len(names(spool_root / "default" / "incoming")) == 1


def test_retried_rejected_file_goes_back_under_its_name_without_its_note(
    spool, spool_root: Path, app: Spool
) -> None:
    incoming = spool_root / "default" / "incoming"
    incoming.parent.mkdir(parents=True, exist_ok=True)
    incoming.mkdir(exist_ok=True)
    (incoming / "job-7.json").write_text('{"task": "not_deployed_yet"}')
    assert run_burst(spool_root).returncode == 0
    assert app.state_of("job-7") == "failed"
    assert spool("retry", "job-7").exit_code == 0
    assert names(incoming) == ["job-7.json"]
    assert "job-7.error.json" not in names(spool_root / "default" / "failed")


def test_cancel_records_a_pending_task_in_failed_as_cancelled(spool, app: Spool) -> None:
    now_id = app.enqueue("echo")
    later_id = app.enqueue("echo", delay=600)
    result = spool("cancel", now_id, later_id)
    assert result.exit_code == 0, result.output
    for task_id in (now_id, later_id):
        shown = app.show(task_id)
        assert shown["state"] == "failed" and shown["error"]["type"] == "Cancelled"


def test_cancelled_task_never_runs_when_a_worker_starts(
    spool, app: Spool, spool_root: Path
) -> None:
    task_id = app.enqueue("echo", args=["never"])
    assert spool("cancel", task_id).exit_code == 0
    assert run_burst(spool_root).returncode == 0
    assert names(spool_root / "default" / "done") == []


def test_purge_deletes_only_old_finished_tasks_and_dry_run_nothing(
    spool, app: Spool, spool_root: Path
) -> None:
    for i in range(3):
        app.enqueue("echo", args=[i])
    assert run_burst(spool_root).returncode == 0
    done = spool_root / "default" / "done"
    old = names(done)[:2]
    for name in old:
        os.utime(done / name, (time.time() - 8 * 86400, time.time() - 8 * 86400))
    dry = spool("purge", "done", "--older-than", "7d", "--dry-run")
    assert dry.exit_code == 0 and "would delete 2" in dry.stdout
    assert len(names(done)) == 3
    real = spool("purge", "done", "--older-than", "7d")
    assert real.exit_code == 0 and "deleted 2" in real.stdout
    assert len(names(done)) == 1


def test_pause_holds_work_across_a_worker_restart_until_resume(
    spool, app: Spool, spool_root: Path
) -> None:
    assert spool("pause", "default").exit_code == 0
    task_id = app.enqueue("echo", args=["held"])
    assert run_burst(spool_root).returncode == 0
    assert run_burst(spool_root).returncode == 0  # a new worker honours the marker too
    assert app.state_of(task_id) == "incoming"
    status = json.loads(spool("status", "--json").stdout)
    assert status["queues"]["default"]["paused"] is True
    assert spool("resume", "default").exit_code == 0
    assert run_burst(spool_root).returncode == 0
    assert app.state_of(task_id) == "done"


def test_pause_of_an_invalid_queue_name_is_a_usage_error(spool) -> None:
    result = spool("pause", "../x")
    assert result.exit_code == 2


def test_show_json_is_one_line_with_queue_and_state(spool, app: Spool) -> None:
    task_id = app.enqueue("echo", args=[7])
    result = spool("show", task_id, "--json")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 1
    shown = json.loads(result.stdout)
    assert (shown["id"], shown["queue"], shown["state"], shown["args"]) == (
        task_id,
        "default",
        "incoming",
        [7],
    )


def test_a_task_whose_outcome_is_being_written_shows_as_processing(
    spool, app: Spool, spool_root: Path
) -> None:
    """A worker renames its claim to a dot-name just before it writes the outcome."""
    task_id = app.enqueue("echo", args=[7])
    dirs = spool_root / "default"
    (name,) = names(dirs / "incoming")
    os.rename(dirs / "incoming" / name, dirs / "processing" / f".{name}@host-1-abcdef")
    shown = json.loads(spool("show", task_id, "--json").stdout)
    assert (shown["id"], shown["state"]) == (task_id, "processing")


def test_wait_returns_within_100_ms_of_completion(app: Spool, start_worker) -> None:
    start_worker()
    lags = []
    for _ in range(3):
        task_id = app.enqueue("sleep_then_return", args=[0.3, "ok"])
        assert app.wait(task_id, timeout=30) == "ok"
        lags.append(time.time() - app.show(task_id)["finished_at"])
    assert min(lags) <= 0.1, lags  # events, not polling: the best of three shows it
    assert max(lags) <= 1.0, lags


# ---- cancelled is its own end ---------------------------------------------------------------


def one_failure_and_one_cancel(spool, app: Spool, spool_root: Path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    failed_id = app.enqueue("fail", args=["real"], max_retries=0)
    cancelled_id = app.enqueue("echo", args=["never"], delay=600)
    assert spool("cancel", cancelled_id).exit_code == 0
    assert run_burst(spool_root).returncode == 0
    assert app.state_of(failed_id) == "failed"
    return failed_id, cancelled_id


def test_retry_all_failed_leaves_cancelled_tasks_alone_and_retries_the_real_failures(
    spool, app: Spool, spool_root: Path
) -> None:
    failed_id, cancelled_id = one_failure_and_one_cancel(spool, app, spool_root)
    result = spool("retry", "--all-failed")
    assert result.exit_code == 0
    assert f"retried {failed_id}" in result.stdout and cancelled_id not in result.stdout
    assert app.state_of(failed_id) == "incoming"
    shown = app.show(cancelled_id)
    assert shown["state"] == "failed" and shown["error"]["type"] == "Cancelled"
    assert spool("retry", "--all-failed").stdout == ""  # nothing left to retry


def test_a_cancelled_task_named_by_its_id_is_revived_and_no_longer_counted_cancelled(
    spool, app: Spool, spool_root: Path
) -> None:
    task_id = app.enqueue("echo", args=["back"])
    assert spool("cancel", task_id).exit_code == 0
    assert spool("retry", task_id).exit_code == 0
    counts = json.loads(spool("status", "--json").stdout)["queues"]["default"]
    assert (counts["incoming"], counts["failed"], counts["cancelled"]) == (1, 0, 0)
    assert os.listdir(spool_root / "default" / "failed") == []  # the marker went too
    assert run_burst(spool_root).returncode == 0
    assert app.show(task_id)["result"] == "back" and "cancelled_at" not in app.show(task_id)


def test_status_and_ls_count_cancelled_tasks_apart_from_failed_ones(
    spool, app: Spool, spool_root: Path
) -> None:
    failed_id, cancelled_id = one_failure_and_one_cancel(spool, app, spool_root)
    counts = json.loads(spool("status", "--json").stdout)["queues"]["default"]
    assert (counts["failed"], counts["cancelled"]) == (1, 1)
    header, row = spool("status").stdout.splitlines()[1:3]
    assert header.split()[5:7] == ["failed", "cancelled"] and row.split()[5:7] == ["1", "1"]
    rows = {r["id"]: r for r in json.loads(spool("ls", "failed", "--json").stdout)}
    assert rows[cancelled_id]["cancelled"] is True and rows[failed_id]["cancelled"] is False
    assert "(cancelled, not failed)" in spool("ls", "failed").stdout


def test_purge_takes_a_cancelled_tasks_marker_with_it(spool, app: Spool, spool_root: Path) -> None:
    task_id = app.enqueue("echo", delay=600)
    assert spool("cancel", task_id).exit_code == 0
    purged = spool("purge", "failed", "--yes")
    assert purged.exit_code == 0 and "deleted 1" in purged.stdout
    assert os.listdir(spool_root / "default" / "failed") == []
    counts = json.loads(spool("status", "--json").stdout)["queues"]["default"]
    assert (counts["failed"], counts["cancelled"]) == (0, 0)


def test_cancel_releases_the_unique_key_so_an_equal_task_can_be_enqueued(spool, app: Spool) -> None:
    first = app.enqueue("echo", unique_key="nightly", delay=600)
    assert app.enqueue("echo", unique_key="nightly") == first  # held: the same task
    assert spool("cancel", first).exit_code == 0
    second = app.enqueue("echo", unique_key="nightly")
    assert second != first and app.state_of(second) == "incoming"


# ---- tables, pause, purge (issue 21) ---------------------------------------------------------


def test_ls_prints_a_header_and_aligned_columns(spool, app: Spool) -> None:
    app.enqueue("echo", args=[1])
    app.enqueue("add", args=[1, 2], priority=5, id="a-rather-long-custom-task-id")
    lines = spool("ls", "incoming").stdout.splitlines()
    assert lines[0].split() == ["id", "task", "queue", "priority", "attempts", "age"]
    assert len(lines) == 3
    for column in ("task", "queue"):  # every row's cell starts where its header does
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines)
    end = lines[0].index("attempts") + len("attempts")  # numbers end under their header
    assert all(line[end - 1] == "0" for line in lines[1:])


def test_ls_delayed_and_failed_have_their_own_column(spool, app: Spool, spool_root: Path) -> None:
    app.enqueue("echo", delay=7200)
    assert spool("ls", "delayed").stdout.splitlines()[0].split()[-2:] == ["due", "in"]
    assert "1h59m" in spool("ls", "delayed").stdout.splitlines()[1]
    app.enqueue("fail", args=["bad thing"], max_retries=0)
    assert run_burst(spool_root).returncode == 0
    header, row = spool("ls", "failed").stdout.splitlines()
    assert header.split()[-1] == "error" and row.endswith("RuntimeError: bad thing")


def test_pause_of_an_unknown_queue_is_refused_unless_create(spool, spool_root: Path) -> None:
    result = spool("pause", "nosuchqueue")
    assert result.exit_code == 2
    assert "no queue 'nosuchqueue'" in result.stderr and "--create" in result.stderr
    assert not (spool_root / "nosuchqueue").exists()
    assert spool("pause", "nosuchqueue", "--create").exit_code == 0
    assert json.loads(spool("status", "--json").stdout)["queues"]["nosuchqueue"]["paused"]


def test_status_shows_the_reason_a_queue_was_paused(spool, app: Spool) -> None:
    app.enqueue("echo")
    assert spool("pause", "default", "--reason", "mail server down").exit_code == 0
    text = spool("status").stdout
    assert "default (paused)" in text
    assert any(
        line.startswith("paused: default since ") and line.endswith(": mail server down")
        for line in text.splitlines()
    )
    pause = json.loads(spool("status", "--json").stdout)["queues"]["default"]["pause"]
    assert pause["reason"] == "mail server down"


def test_purge_without_older_than_off_a_terminal_needs_yes(
    spool, app: Spool, spool_root: Path
) -> None:
    app.enqueue("echo")
    assert run_burst(spool_root).returncode == 0
    refused = spool("purge", "done")
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert len(names(spool_root / "default" / "done")) == 1
    done = spool("purge", "done", "--yes")
    assert done.exit_code == 0 and "deleted 1" in done.stdout
    assert names(spool_root / "default" / "done") == []


@pytest.mark.parametrize(("answer", "left"), [("n", 1), ("y", 0)])
def test_purge_without_older_than_asks_on_a_terminal(
    app: Spool, spool_root: Path, answer: str, left: int
) -> None:
    app.enqueue("echo")
    assert run_burst(spool_root).returncode == 0
    output = run_on_terminal(spool_command(spool_root, "purge", "done"), answer + "\n")
    assert "Delete all 1 done entr(y/ies) of every queue? [y/N]" in output
    assert len(names(spool_root / "default" / "done")) == left


def run_on_terminal(argv: list[str], typed: str) -> str:
    """Run `argv` with a pseudo-terminal as stdin and stdout; type `typed` at its prompt."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, cwd=PROJECT_DIR)
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 30
    while b"[y/N]" not in seen and time.monotonic() < deadline:
        if select.select([controller], [], [], 0.5)[0]:
            seen += os.read(controller, 4096)
    os.write(controller, typed.encode())
    while proc.poll() is None or select.select([controller], [], [], 0)[0]:
        try:
            if select.select([controller], [], [], 0.5)[0]:
                seen += os.read(controller, 4096)
        except OSError:  # the terminal closed with the process
            break
    proc.wait(timeout=30)
    os.close(controller)
    return seen.decode(errors="replace")


def test_status_says_all_for_a_worker_that_serves_every_queue(
    spool, start_worker, spool_root: Path
) -> None:
    start_worker()
    start_worker("--queue", "mail")
    wait_until(lambda: len(json.loads(spool("status", "--json").stdout)["workers"]) == 2)
    text = spool("status").stdout
    rows = text[text.index("workers: 2 alive") :].splitlines()[2:]
    assert sorted(row.split()[-1] for row in rows) == ["all", "mail"]
