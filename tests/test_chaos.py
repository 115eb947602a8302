"""The chaos soak (`python -m bench.chaos`) runs, and its verdict sees what breaks.

A short run under a real supervisord is in the normal suite (kills of workers and of supervisord,
no full disk, so no root needed); a longer one with handler kills and a full disk (root: a tmpfs)
is a stress test. The verdict itself is checked on a spool written by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import Produced, Scratch, Tally, judge
from spool.layout import QueueDirs
from tests.conftest import PROJECT_DIR

KINDS = {"cli", "cli-from", "api", "api-many", "drop"}


def run_chaos(tmp_path: Path, *args: str, timeout: float) -> tuple[str, int, dict[str, Any]]:
    """Run the soak; (its output, exit code, its --json report)."""
    out = tmp_path / "chaos.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.chaos", *args, "--json", str(out)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    return result.stdout + result.stderr, result.returncode, report


@pytest.mark.supervisor
def test_a_short_chaos_run_loses_nothing_and_runs_nothing_twice_without_a_lost_attempt(
    tmp_path: Path,
) -> None:
    output, code, report = run_chaos(
        tmp_path,
        *("--tasks", "300", "--seconds", "10", "--worker-kills", "3"),
        *("--supervisord-kills", "1", "--handler-kills", "0", "--full-disk", "0"),
        timeout=120,
    )
    assert code == 0, output
    assert report["accepted"] == report["figures"]["done"] == 300
    assert set(report["by_kind"]) == KINDS
    assert report["tally"]["worker_kills"] == 3
    assert report["tally"]["supervisord_kills"] == 1
    assert report["figures"]["failed"] == 0
    assert "verdict: every promise held" in output


@pytest.mark.stress
@pytest.mark.supervisor
def test_chaos_soak_with_kills_and_a_full_disk_keeps_every_promise(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the full disk is a tmpfs the soak mounts: root only")
    output, code, report = run_chaos(
        tmp_path,
        *("--tasks", "2000", "--seconds", "45", "--worker-kills", "15"),
        *("--supervisord-kills", "2", "--handler-kills", "6", "--full-disk", "3"),
        timeout=400,
    )
    assert code == 0, output
    tally = report["tally"]
    assert (tally["worker_kills"], tally["supervisord_kills"], tally["handler_kills"]) == (15, 2, 6)
    assert tally["disk_full_seconds"] >= 3
    assert report["accepted"] == report["figures"]["done"] >= 2000


# ---- the verdict, on a spool written by hand -----------------------------------------------


def write_done(dirs: QueueDirs, task_id: str, tag: str, lost_types: list[str]) -> None:
    history = [
        {"attempt": n, "worker": "w", "error": {"type": kind, "message": "", "traceback": ""}}
        for n, kind in enumerate(lost_types, 1)
    ]
    task = {
        "id": task_id,
        "task": "chaos_effect",
        "args": [tag, 0],
        "attempts": len(history) + 1,
        "history": history,
    }
    (dirs.done / f"{task_id}.json").write_text(json.dumps(task))


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    scratch = Scratch(tmp_path)
    (scratch.var / "log").mkdir(parents=True)
    QueueDirs(scratch.root, "default").create()
    return scratch


def test_the_verdict_explains_a_second_run_by_a_lost_attempt_and_not_otherwise(
    scratch: Scratch,
) -> None:
    dirs = QueueDirs(scratch.root, "default")
    write_done(dirs, "id-1", "api-1", ["WorkerLost"])
    write_done(dirs, "id-2", "api-2", [])
    write_done(dirs, "id-3", "api-3", [])
    scratch.effects.write_text("api-1 10 1.0\napi-1 11 2.0\napi-2 10 3.0\napi-2 12 4.0\n")
    produced = Produced(accepted={"api-1": "id-1", "api-2": "id-2", "api-3": "id-3"})

    verdict = judge(scratch, produced, Tally())

    assert verdict.figures["duplicated runs explained / unexplained"] == "1 / 1"
    assert any("ran more often than attempts were lost" in b for b in verdict.broken)
    assert any("handler never ran" in b for b in verdict.broken)  # api-3
    assert any("id-2" in line and "handler ran 2x" in line for line in verdict.evidence)


def test_the_verdict_names_a_task_not_done_one_left_in_incoming_and_an_enqueue_that_lied(
    scratch: Scratch,
) -> None:
    dirs = QueueDirs(scratch.root, "default")
    write_done(dirs, "id-1", "api-1", [])
    write_done(dirs, "id-9", "drop-9", [])
    (dirs.incoming / "drop-2.json").write_text('{"task": "chaos_effect"}')
    scratch.effects.write_text("api-1 10 1.0\ndrop-9 10 2.0\n")
    produced = Produced(accepted={"api-1": "id-1", "drop-2": "drop-2"}, refused_tags={"drop-9"})

    verdict = judge(scratch, produced, Tally())

    assert verdict.broken == [
        "1 accepted task(s) not in done/",
        "1 task(s) left in incoming/",
        "1 enqueue(s) reported an error but enqueued anyway",
    ]
