"""Each attempt's output kept beside its task (see execute, inspect/beside): captured from the
handler process (print, sys.stderr, logging, child processes), bounded, shown by `spool logs`
(and followed with -f), removed with the task by purge and retention."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from spool import Spool
from spool.cli import cli
from spool.layout import QueueDirs
from spool.manage import purge
from spool.retention import Retention
from tests.conftest import PROJECT_DIR, TEST_CONFIG, run_burst, spool_command, wait_until

Starter = Callable[..., subprocess.Popen[bytes]]


def beside(spool_root: Path, task_id: str) -> Path:
    return QueueDirs(spool_root, "default").beside(task_id)


def spool_logs(spool_root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["--root", str(spool_root), "--config", str(TEST_CONFIG), "logs", *args]
    )
    return result.exit_code, result.output


def test_print_stderr_logging_and_a_child_process_are_kept_with_the_attempt(
    app: Spool, spool_root: Path
) -> None:
    task_id = app.enqueue("talk")
    assert run_burst(spool_root).returncode == 0
    log = (beside(spool_root, task_id) / "1.log").read_text()
    lines = log.splitlines()
    assert lines[:2] == ["to stdout", "to stderr"]
    assert lines[2].endswith("WARNING tests.tasks: to logging")
    assert lines[3:] == ["from a child process", "the end"]
    code, output = spool_logs(spool_root, task_id)
    assert (code, output) == (0, log)


def test_each_attempt_keeps_its_own_output(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    task_id = app.enqueue("talk_then_fail", max_retries=1)
    start_worker()
    wait_until(lambda: app.state_of(task_id) == "failed")
    for attempt in (1, 2):
        code, output = spool_logs(spool_root, task_id, "--attempt", str(attempt))
        assert (code, output) == (0, f"attempt {attempt} says hello\n")
    code, output = spool_logs(spool_root, task_id, "--attempt", "3")
    assert code == 1
    assert "no output kept for attempt 3 (kept: 1, 2)" in output


def test_output_is_cut_to_the_last_64_kib_of_the_attempt(app: Spool, spool_root: Path) -> None:
    task_id = app.enqueue("talk", kwargs={"size": 1_000_000})
    assert run_burst(spool_root).returncode == 0
    log = (beside(spool_root, task_id) / "1.log").read_bytes()
    note = b"[spool: earlier output of this attempt was not kept]\n"
    assert log.startswith(note)
    assert len(log) == len(note) + 64 * 1024
    assert log.endswith(b"x\nthe end\n")


def test_a_task_that_writes_nothing_keeps_no_output(app: Spool, spool_root: Path) -> None:
    task_id = app.enqueue("noop")
    assert run_burst(spool_root).returncode == 0
    assert not beside(spool_root, task_id).exists()
    code, output = spool_logs(spool_root, task_id)
    assert code == 1
    assert output.strip().endswith("has no output kept (it has not written any)")


def test_purge_and_retention_remove_the_output_with_the_task(app: Spool, spool_root: Path) -> None:
    purged, kept_for_retention = app.enqueue("talk"), app.enqueue("talk")
    assert run_burst(spool_root).returncode == 0
    dirs = QueueDirs(spool_root, "default")
    os.utime(dirs.done / f"{purged}.json", (0, 0))
    assert purge(spool_root, "done", older_than_seconds=3600).deleted == 1
    assert not beside(spool_root, purged).exists()
    assert beside(spool_root, kept_for_retention).exists()
    Retention(spool_root, {"done": 0.0}).step(["default"], now=time.time() + 10)
    assert not (dirs.done / f"{kept_for_retention}.json").exists()
    assert not beside(spool_root, kept_for_retention).exists()


def test_logs_follow_prints_a_running_attempt_until_it_ends(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path
) -> None:
    marker = tmp_path / "stop"
    task_id = app.enqueue("talk_until", args=[str(marker)])
    start_worker()
    wait_until(lambda: app.state_of(task_id) == "processing")
    followed = tmp_path / "followed.txt"
    with open(followed, "wb") as out:
        follower = subprocess.Popen(
            spool_command(spool_root, "logs", "-f", task_id), cwd=PROJECT_DIR, stdout=out
        )
    try:
        wait_until(lambda: b"line 3\n" in followed.read_bytes())
        assert follower.poll() is None  # still following
        marker.touch()
        assert follower.wait(timeout=15) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    lines = followed.read_text().splitlines()
    assert lines[-1] == "finished"
    assert lines[:-1] == [f"line {n}" for n in range(1, len(lines))]
    assert followed.read_bytes() == (beside(spool_root, task_id) / "1.log").read_bytes()


def test_the_worker_keeps_a_running_attempts_output_bounded(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    task_id = app.enqueue("talk_a_lot", args=[250, 20_000, 0.01])  # 5 MB in about 2.5 s
    start_worker()
    wait_until(lambda: app.state_of(task_id) == "processing")
    biggest = 0
    while app.state_of(task_id) == "processing":
        for scratch in (spool_root / ".workers").glob("*.out"):
            with contextlib.suppress(FileNotFoundError):
                biggest = max(biggest, scratch.stat().st_size)
        time.sleep(0.005)
    wait_until(lambda: app.state_of(task_id) == "done")
    assert 0 < biggest <= 1024 * 1024  # 4 x 64 KiB, plus what is written between two looks
    log = (beside(spool_root, task_id) / "1.log").read_bytes()
    assert log.endswith(b"the last line\n") and len(log) <= 64 * 1024 + 100
