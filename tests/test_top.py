"""`spool top`: frames with depth, throughput per minute and recent failures."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from spool import Spool
from spool.cli import cli
from spool.inspect.top import render, run, snapshot
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


def test_throughput_per_minute_comes_from_the_workers_counters(
    app: Spool, spool_root: Path
) -> None:
    first = snapshot(spool_root)
    for n in range(6):
        app.enqueue("add", args=[n, n])
    assert run_burst(spool_root).returncode == 0
    second = snapshot(spool_root)
    second["at"] = first["at"] + 30.0  # as if half a minute passed between the two frames
    frame = render(second, first)
    row = next(line for line in frame.splitlines() if line.startswith("default"))
    assert row.split()[-1] == "12"  # 6 finished in 30 s


def test_run_shows_the_asked_number_of_frames(spool_root: Path) -> None:
    frames: list[str] = []
    run(spool_root, 0.01, frames.append, frames=2)
    assert len(frames) == 2 and all("spool top" in frame for frame in frames)
