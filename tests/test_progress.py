"""spool.progress(): a throttled record beside the running task (see spool.context), shown by
`spool show`, `spool ls processing`, `spool top` and the dashboard's task and queue pages while
it runs, and kept in the final file."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from spool import Spool
from spool.cli import cli
from spool.context import PROGRESS_EVERY_SECONDS
from spool.inspect.beside import progress_of
from spool.layout import PROGRESS_FILE, QueueDirs
from tests.conftest import PROJECT_DIR, TEST_CONFIG, run_burst, spool_command, wait_until
from tests.test_web import client_for, settings_for

Starter = Callable[..., subprocess.Popen[bytes]]


def spool_cli(spool_root: Path, *args: str) -> str:
    result = CliRunner().invoke(
        cli, ["--root", str(spool_root), "--config", str(TEST_CONFIG), *args]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_progress_is_shown_while_the_task_runs_and_kept_in_the_final_file(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path
) -> None:
    marker = tmp_path / "go-on"
    task_id = app.enqueue("progress_then_wait", args=[str(marker)])
    start_worker()
    wait_until(lambda: app.show(task_id).get("progress", {}).get("done") == 3)
    shown = json.loads(spool_cli(spool_root, "show", "--json", task_id))
    assert shown["state"] == "processing"
    assert (shown["progress"]["total"], shown["progress"]["message"]) == (10, "three done")
    assert "3/10 (30%) three done" in spool_cli(spool_root, "ls", "processing")
    assert f"{task_id}  progress_then_wait  attempt 1  for " in spool_cli(
        spool_root, "top", "--once"
    )
    assert "3/10 (30%) three done" in spool_cli(spool_root, "top", "--once")
    with client_for(settings_for(spool_root)) as client:
        page = client.get(f"/tasks/{task_id}").text
        queue_page = client.get("/queues/default?state=processing").text
    assert "3/10 (30%) three done" in page
    assert 'data-progress data-label="progress">3/10 (30%) three done<' in queue_page
    assert "Output of attempt 1 (running)" in page
    assert "three done so far" in page
    marker.touch()
    wait_until(lambda: app.state_of(task_id) == "done")
    final = app.show(task_id)["progress"]
    assert (final["done"], final["total"], final["message"]) == (10, 10, "all done")
    assert not (QueueDirs(spool_root, "default").beside(task_id) / "progress.json").exists()


def test_progress_called_100000_times_writes_a_few_files_a_second(
    app: Spool, spool_root: Path
) -> None:
    task_id = app.enqueue("count_progress_writes", args=[100_000])
    assert run_burst(spool_root).returncode == 0
    shown = app.show(task_id)
    seconds = shown["finished_at"] - shown["started_at"]
    assert 1 <= shown["result"] <= seconds / PROGRESS_EVERY_SECONDS + 2
    assert shown["progress"]["done"] == 100_000


def test_wait_with_progress_shows_it_then_prints_the_result(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path
) -> None:
    marker = tmp_path / "go-on"
    task_id = app.enqueue("progress_then_wait", args=[str(marker)])
    start_worker()
    err_path = tmp_path / "wait.err"
    with open(err_path, "wb") as err:
        waiter = subprocess.Popen(
            spool_command(spool_root, "wait", "--progress", "--timeout", "30", task_id),
            cwd=PROJECT_DIR,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        wait_until(lambda: f"{task_id} three done".encode() in err_path.read_bytes())
        marker.touch()
        out, _ = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0
    assert json.loads(out) == "ok"


def test_a_progress_file_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    dirs = QueueDirs(tmp_path, "default")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"done": 99}')
    dirs.beside("t1").mkdir(parents=True)
    (dirs.beside("t1") / PROGRESS_FILE).symlink_to(elsewhere)
    assert progress_of(dirs, {"id": "t1", "progress": {"done": 1}}) == {"done": 1}
