"""The benchmark harness still runs: `python -m bench compare --smoke` (spool and raw, tiny sizes).

Figures are not checked here (speed targets live in bench/, measured on a quiet machine); what
is checked is that every workload ran for spool, lost nothing, and the report was written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_DIR

WORKLOAD_ROWS = [
    "enqueue one by one",
    "enqueue bulk",
    "drain, 2 workers, first -> last start",
    "idle pick-up p50",
    "5 ms tasks, 2 workers",
    "claim rate, 1 worker, 100,000 waiting",
    "worker RSS, 100,000 delayed tasks",
]


def row(report: str, label: str) -> list[str]:
    for line in report.splitlines():
        if line.startswith(f"| {label}"):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row {label!r} in the report")


def test_the_smoke_benchmark_runs_every_workload_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS-smoke.md"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "compare",
            "--smoke",
            "--out",
            str(out),
            "--tmp",
            str(tmp_path),
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    header = row(report, "figure")
    assert header[2:] == ["spool", "raw"]
    for label in WORKLOAD_ROWS:
        spool_cell = row(report, label)[2]
        assert spool_cell not in ("-", "nan"), (label, spool_cell)
    for floor in ("  same, spool's file steps only", "  same, plus a handler process"):
        assert row(report, floor)[3] not in ("-", "nan"), floor  # (the raw column)
    assert row(report, "tasks lost")[2:] == ["0", "0"]
    assert "durable enqueue one by one / raw loop" in report
