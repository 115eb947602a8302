"""Counting done/ and failed/ at a million files: counted now and then, carried forward between."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from spool import counts, stats
from spool.cli import cli
from spool.inspect.status import spool_status
from spool.layout import QueueDirs


@pytest.fixture
def big(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(counts, "BIG_ENTRIES", 10)
    return 10


def finish_tasks(spool_root: Path, worker: stats.WorkerStats, first: int, n: int) -> None:
    """What a worker does, as far as counts go: a file in done/ and a count of it."""
    dirs = QueueDirs(spool_root, "default").create()
    for i in range(first, first + n):
        (dirs.done / f"t{i}.json").write_text("{}")
        worker.record("default", "done", 0.001)
    worker.flush(0.0, force=True)


def done_count(spool_root: Path) -> int:
    return int(spool_status(spool_root)["queues"]["default"]["done"])


def test_a_small_directory_is_counted_every_time(spool_root: Path) -> None:
    finish_tasks(spool_root, stats.WorkerStats(spool_root, "w1"), 0, 3)
    assert done_count(spool_root) == 3
    assert "done" not in counts.read_cache(QueueDirs(spool_root, "default"))


def test_a_big_directory_is_counted_once_then_carried_forward(spool_root: Path, big: int) -> None:
    worker = stats.WorkerStats(spool_root, "w1")
    finish_tasks(spool_root, worker, 0, 12)
    assert done_count(spool_root) == 12
    cached = counts.read_cache(QueueDirs(spool_root, "default"))["done"]
    assert cached["count"] == 12
    finish_tasks(spool_root, worker, 12, 5)
    assert done_count(spool_root) == 17  # carried forward by the workers' counters
    assert counts.read_cache(QueueDirs(spool_root, "default"))["done"]["count"] == 12


def test_a_purge_is_carried_forward_too(spool_root: Path, big: int) -> None:
    finish_tasks(spool_root, stats.WorkerStats(spool_root, "w1"), 0, 15)
    assert done_count(spool_root) == 15
    done = spool_root / "default" / "done"
    for name in sorted(os.listdir(done))[:4]:
        os.utime(done / name, (0, 0))
    result = CliRunner().invoke(
        cli, ["--root", str(spool_root), "purge", "done", "--older-than", "1d"]
    )
    assert result.exit_code == 0 and "deleted 4" in result.stdout
    assert done_count(spool_root) == 11


def test_a_recount_corrects_what_no_counter_saw(spool_root: Path, big: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    finish_tasks(spool_root, stats.WorkerStats(spool_root, "w1"), 0, 15)
    assert done_count(spool_root) == 15
    done = spool_root / "default" / "done"
    for name in sorted(os.listdir(done))[:3]:
        os.unlink(done / name)  # by hand: no counter knows
    assert done_count(spool_root) == 15
    monkeypatch.setattr(counts, "RECOUNT_SECONDS", 0.0)
    recounter = counts.Recounter(spool_root)
    recounter.maybe_start(["default"], now=1e10)
    recounter.join()
    assert done_count(spool_root) == 12


def test_a_worker_counts_a_big_directory_it_never_counted(
    spool_root: Path, big: int, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(counts, "BIG_DIRECTORY_BYTES", 0)
    finish_tasks(spool_root, stats.WorkerStats(spool_root, "w1"), 0, 12)
    recounter = counts.Recounter(spool_root)
    recounter.maybe_start(["default"], now=0.0)
    recounter.join()
    assert counts.read_cache(QueueDirs(spool_root, "default"))["done"]["count"] == 12


def test_a_directory_that_became_small_is_counted_every_time_again(
    spool_root: Path, big: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    finish_tasks(spool_root, stats.WorkerStats(spool_root, "w1"), 0, 12)
    assert done_count(spool_root) == 12
    done = spool_root / "default" / "done"
    for name in sorted(os.listdir(done))[:8]:
        os.unlink(done / name)
    monkeypatch.setattr(counts, "RECOUNT_SECONDS", 0.0)
    recounter = counts.Recounter(spool_root)
    recounter.maybe_start(["default"], now=1e10)
    recounter.join()
    assert "done" not in counts.read_cache(QueueDirs(spool_root, "default"))
    assert done_count(spool_root) == 4


def test_cancelled_tasks_in_a_big_failed_directory_are_carried_forward_apart(
    spool_root: Path, big: int
) -> None:
    from spool.manage import cancel

    dirs = QueueDirs(spool_root, "default").create()
    worker = stats.WorkerStats(spool_root, "w1")
    for i in range(12):
        (dirs.failed / f"f{i}.json").write_text("{}")
        worker.record("default", "failed")
    worker.flush(0.0, force=True)
    assert spool_status(spool_root)["queues"]["default"]["failed"] == 12  # counted, cached
    for i in range(3):
        (dirs.incoming / f"c{i}.json").write_text('{"task": "echo"}')
        cancel(spool_root, f"c{i}")
    shown = spool_status(spool_root)["queues"]["default"]
    assert (shown["failed"], shown["cancelled"]) == (12, 3)  # carried forward by the counters
    assert counts.read_cache(dirs)["failed"]["count"] == 12
