"""`spool top`: frames with depth, throughput per minute and recent failures."""

from __future__ import annotations

import time
from pathlib import Path

from click.testing import CliRunner

from spool import Spool
from spool.cli import cli
from spool.inspect.top import render, run, snapshot
from spool.stats import SLOT_SECONDS, fold_dead, stale_files
from tests.conftest import TEST_CONFIG, run_burst


def test_top_once_prints_one_frame_with_depths_and_failures(app: Spool, spool_root: Path) -> None:
    app.enqueue("fail", args=["it broke"], max_retries=0)
    app.enqueue("echo", delay=600)
    assert run_burst(spool_root).returncode == 0
    result = CliRunner().invoke(
        cli, ["--root", str(spool_root), "--config", str(TEST_CONFIG), "top", "--once"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["queue", "incoming", "delayed", "processing", "done", "failed",
                                "oldest", "per", "min"]  # fmt: skip
    assert lines[2].split()[:6] == ["default", "0", "1", "0", "0", "1"]
    assert "RuntimeError: it broke" in result.stdout


def test_per_minute_is_what_the_workers_finished_in_the_last_minute_even_in_one_frame(
    app: Spool, spool_root: Path
) -> None:
    # Broke once: `-` with --once, and 0 -> 58,207 -> 0 live (differences of counters read
    # while a dead worker's file was folded into the archive).
    for n in range(6):
        app.enqueue("add", args=[n, n])
    finished_from = time.time()
    assert run_burst(spool_root).returncode == 0
    finished_by = time.time()

    def rate(at: float) -> str:
        frame = render(snapshot(spool_root, now=at))
        return next(line for line in frame.splitlines() if line.startswith("default")).split()[-1]

    assert rate(finished_by + SLOT_SECONDS) == "6"  # the slots they finished in are whole
    assert rate(finished_from + 90) == "0"  # a minute later, none
    fold_dead(spool_root, stale_files(spool_root, time.time(), min_age=0))  # folded: kept
    assert rate(finished_by + SLOT_SECONDS) == "6"


def test_run_shows_the_asked_number_of_frames(spool_root: Path) -> None:
    frames: list[str] = []
    run(spool_root, 0.01, frames.append, frames=2)
    assert len(frames) == 2 and all("spool top" in frame for frame in frames)
