"""Cancel a running task (see manage.cancel, execute): its worker sees the request within a
second, stops the handler's whole process group, records the task cancelled, and goes on."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from spool import Spool
from spool.cli import cli
from spool.execute import cancel_reason
from spool.layout import QueueDirs, cancelled_marker
from tests.conftest import TEST_CONFIG, wait_until

Starter = Callable[..., subprocess.Popen[bytes]]


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its reaper is gone too
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_cancel_stops_a_running_task_and_its_child_process_and_the_worker_goes_on(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    running = app.enqueue("spawn_and_sleep", args=[str(pid_file), 60])
    start_worker()
    wait_until(lambda: pid_file.exists() and pid_file.read_text() != "")
    child = int(pid_file.read_text())
    following = app.enqueue("echo", args=["next"])
    started = time.monotonic()
    result = CliRunner().invoke(
        cli, ["--root", str(spool_root), "--config", str(TEST_CONFIG), "cancel", running]
    )
    assert (result.exit_code, result.output) == (0, f"cancelled {running}\n")
    assert time.monotonic() - started < 2.0
    shown = app.show(running)
    assert shown["state"] == "failed"
    assert shown["error"]["type"] == "Cancelled"
    assert shown["error"]["message"] == "cancelled by an operator (while it ran)"
    assert shown["history"][-1]["decision"]["action"] == "cancel"
    dirs = QueueDirs(spool_root, "default")
    assert (dirs.failed / cancelled_marker(f"{running}.json")).exists()
    assert not (dirs.beside(running) / "cancel").exists()
    wait_until(lambda: is_gone(child))
    wait_until(lambda: app.state_of(following) == "done")
    assert app.show(following)["result"] == "next"


def test_a_handler_sees_the_cancel_at_a_safe_point(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path
) -> None:
    note = tmp_path / "note"
    task_id = app.enqueue("stop_when_cancelled", args=[str(note)])
    start_worker()
    wait_until(lambda: app.state_of(task_id) == "processing")
    result = CliRunner().invoke(
        cli, ["--root", str(spool_root), "--config", str(TEST_CONFIG), "cancel", task_id]
    )
    assert result.exit_code == 0, result.output
    assert note.read_text() == "saw the cancel"
    assert app.show(task_id)["error"]["type"] == "Cancelled"


def test_cancel_of_a_finished_task_is_refused_in_one_line(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    task_id = app.enqueue("echo")
    start_worker()
    wait_until(lambda: app.state_of(task_id) == "done")
    result = CliRunner().invoke(
        cli, ["--root", str(spool_root), "--config", str(TEST_CONFIG), "cancel", task_id]
    )
    assert result.exit_code == 1
    assert result.output == (
        f"Error: task {task_id} is done: only pending or running tasks can be cancelled\n"
    )


def test_a_cancel_request_is_read_for_its_reason_only_when_it_is_a_regular_file(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"reason": "read through a symlink"}')
    request = tmp_path / "cancel"
    request.symlink_to(elsewhere)
    assert cancel_reason(str(request)) == "cancelled (while it ran)"
    request.unlink()
    request.write_text('{"reason": "not needed any more"}')
    assert cancel_reason(str(request)) == "not needed any more (while it ran)"
