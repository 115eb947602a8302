"""Outcomes are seen only once durable: the committer syncs a group of staged outcomes, then
publishes them, and drops their claims after the next sync. A worker killed at either step
leaves its claim, and recovery finishes the outcome without running the task again."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from spool import Spool
from spool.faults import CRASH_ENV
from spool.workers import WAITING_SUFFIX
from tests.conftest import TEST_CONFIG, wait_until
from tests.test_disk_faults import every_entry, runs

Starter = Callable[..., subprocess.Popen[bytes]]


def events_config(tmp_path: Path) -> Path:
    config = tmp_path / "events.toml"
    config.write_text(TEST_CONFIG.read_text() + "\n[notify]\nevents = true\n")
    return config


def event_names(root: Path, task_id: str) -> list[str]:
    """The task's events, waiting or delivered."""
    events = root / ".events"
    waiting = [n for n in every_entry(events) if not n.startswith(".")]
    return [n for n in waiting + every_entry(events / ".sent") if task_id in n]


def waiting_marks(root: Path) -> int:
    """How many workers show outcomes waiting for the disk (see WorkerLock.show_waiting)."""
    return len([n for n in every_entry(root / ".workers") if n.endswith(WAITING_SUFFIX)])


def killed_at(
    point: str, app: Spool, start_worker: Starter, tmp_path: Path, config: Path
) -> tuple[str, Path]:
    """Enqueue one `record` task; a worker runs it and kills itself at `point`."""
    side_effects = tmp_path / "runs.log"
    task_id = app.enqueue("record", [str(side_effects), "ran"])
    os.environ[CRASH_ENV] = f"{point}:{tmp_path / 'crashed'}"
    try:
        worker = start_worker(config=config)
    finally:
        del os.environ[CRASH_ENV]
    assert worker.wait(timeout=20) == -signal.SIGKILL
    return task_id, side_effects


def finished_by_recovery(
    app: Spool, start_worker: Starter, config: Path, task_id: str, side_effects: Path
) -> None:
    """A worker recovers the dead worker's claim: the task is done once, with one event."""
    start_worker(config=config)
    wait_until(lambda: app.state_of(task_id) == "done", timeout=20)
    wait_until(lambda: every_entry(app.root / "default" / "processing") == [], timeout=10)
    assert runs(side_effects) == ["ran"]
    assert app.show(task_id)["attempts"] == 1
    wait_until(lambda: len(event_names(app.root, task_id)) == 1, timeout=10)


def test_an_outcome_not_yet_synced_is_nowhere_to_be_seen_and_recovery_publishes_it(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path
) -> None:
    config = events_config(tmp_path)
    task_id, side_effects = killed_at("before-commit-sync", app, start_worker, tmp_path, config)
    queue = spool_root / "default"
    assert app.state_of(task_id) == "processing"  # not done: its outcome is not durable yet
    assert every_entry(queue / "done") == []
    assert [n for n in every_entry(queue / "tmp") if n.endswith(".done")] != []  # staged
    assert event_names(spool_root, task_id) == []
    finished_by_recovery(app, start_worker, config, task_id, side_effects)
    assert every_entry(queue / "tmp") == []  # the staged outcome was published, not run again


def test_a_worker_killed_after_publishing_leaves_its_claim_until_recovery_drops_it(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path
) -> None:
    config = events_config(tmp_path)
    task_id, side_effects = killed_at("after-publish", app, start_worker, tmp_path, config)
    queue = spool_root / "default"
    assert app.state_of(task_id) == "done"
    assert [n for n in every_entry(queue / "processing") if n.startswith(".")] != []  # hidden
    finished_by_recovery(app, start_worker, config, task_id, side_effects)


@pytest.mark.parametrize("point", ["before-commit-sync", "after-publish"])
def test_a_worker_killed_while_committing_a_batch_runs_no_task_twice(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path, point: str
) -> None:
    side_effects = tmp_path / "runs.log"
    tasks = [{"task": "record", "args": [str(side_effects), f"t{i}"]} for i in range(40)]
    ids = app.enqueue_many(tasks)
    os.environ[CRASH_ENV] = f"{point}:{tmp_path / 'crashed'}"
    try:
        first = start_worker()
    finally:
        del os.environ[CRASH_ENV]
    assert first.wait(timeout=30) == -signal.SIGKILL
    start_worker()
    wait_until(lambda: all(app.state_of(task_id) == "done" for task_id in ids), timeout=30)
    counted = sorted(runs(side_effects))
    assert counted == sorted(set(counted))  # none ran twice
    assert sum(app.show(task_id)["attempts"] for task_id in ids) == 40


def test_a_destination_the_disk_refuses_stops_new_claims_until_the_outcome_is_published(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    done = spool_root / "default" / "done"
    first = app.enqueue("echo", args=["first"])
    done.rmdir()
    done.write_text("not a directory")  # staging works; publishing into done/ fails
    log = tmp_path / "worker.log"
    with open(log, "wb") as stderr:
        worker = start_worker(stderr=stderr.fileno())
    wait_until(lambda: b"cannot record the outcome" in log.read_bytes(), timeout=15)
    wait_until(lambda: waiting_marks(spool_root) == 1, timeout=15)  # for status and metrics
    later = [app.enqueue("echo", args=[f"later {i}"]) for i in range(3)]
    time.sleep(1.5)  # (time enough to claim them, were claims not stopped)
    assert worker.poll() is None
    assert {app.state_of(task_id) for task_id in later} == {"incoming"}  # no new claims
    done.unlink()
    done.mkdir()
    for task_id in [first, *later]:
        wait_until(lambda task_id=task_id: app.state_of(task_id) == "done", timeout=15)
    assert app.show(first)["result"] == "first"
    wait_until(lambda: waiting_marks(spool_root) == 0, timeout=15)


def test_an_outcome_is_published_while_the_next_task_of_its_batch_runs_long(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    quick = app.enqueue("echo", args=["quick"], priority=9)
    slow = app.enqueue("sleep_then_return", args=[20, "slow"])
    start_worker()  # claims both in one batch: the worker waits for the slow one's reply
    wait_until(lambda: app.state_of(slow) == "processing", timeout=10)
    wait_until(lambda: app.state_of(quick) == "done", timeout=5)  # the committer publishes it
    assert app.show(quick)["result"] == "quick"
    assert app.state_of(slow) == "processing"
