"""`spool top`: a live view of the spool, refreshed in place: depth per queue and state (the
cancelled tasks beside the failed ones), tasks finished in the last minute (the workers count
them per 10-second slot, see stats, so one frame shows a true rate), the tasks running (with
their progress, see spool.context) and the most recent failures (cancelled tasks are none)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spool import stats
from spool.inspect.beside import describe_progress
from spool.inspect.listing import Filters, list_tasks
from spool.inspect.status import spool_status

COLUMNS = ("incoming", "delayed", "processing", "done", "failed")
RECENT = 5


def snapshot(root: Path, now: float | None = None) -> dict[str, Any]:
    """What one frame shows."""
    now = time.time() if now is None else now
    totals = stats.load_all(root)
    return {
        "at": now,
        "status": spool_status(root, now, totals),
        "per_minute": {q: s.finished_last_minute(now) for q, s in totals.items()},
        "running": list_tasks(root, "processing", Filters(limit=RECENT)),
        "failures": recent_failures(root),
    }


def recent_failures(root: Path) -> list[dict[str, Any]]:
    """The newest failed tasks, the cancelled ones left out (they are no failures)."""
    rows = list_tasks(root, "failed", Filters(limit=RECENT * 4))
    return [row for row in rows if not row.get("cancelled")][:RECENT]


def render(frame: dict[str, Any]) -> str:
    """One frame as text."""
    status = frame["status"]
    workers = len(status["workers"])
    clock = time.strftime("%H:%M:%S %Z", time.localtime(frame["at"]))
    lines = [f"spool top — {status['root']} — {clock} — {workers} workers"]
    header = ["queue", *COLUMNS, "oldest", "per min"]
    rows = [header]
    for queue, counts in status["queues"].items():
        age = counts["oldest_waiting_seconds"]
        name = queue + (" (paused)" if counts["paused"] else "")
        cells = [str(counts[c]) for c in COLUMNS]
        if counts.get("cancelled"):  # beside the failed: cancelled tasks are no failures
            cells[-1] += f" (+{counts['cancelled']} cancelled)"
        rate = str(frame["per_minute"].get(queue, 0))
        rows.append([name, *cells, "-" if age is None else f"{age:.0f}s", rate])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines += ["", *running_lines(frame.get("running", []))]
    lines.append("")
    lines.append("recent failures:" if frame["failures"] else "recent failures: none")
    for item in frame["failures"]:
        error = f"{item.get('error_type')}: {item.get('error_message')}"
        lines.append(f"  {item['id']}  {item['task']}  {error}"[:160])
    return "\n".join(lines)


def running_lines(running: list[dict[str, Any]]) -> list[str]:
    """The running tasks (the first RECENT), each with its progress when it reports one."""
    lines = ["running:" if running else "running: none"]
    for item in running:
        line = f"  {item['id']}  {item['task']}  attempt {item.get('attempt', '?')}"
        if item.get("running_seconds") is not None:
            line += f"  for {item['running_seconds']:.0f}s"
        if item.get("progress"):
            line += f"  {describe_progress(item['progress'])}"
        lines.append(line[:160])
    return lines


def run(
    root: Path, interval: float, show: Callable[[str], None], frames: int | None = None
) -> None:
    """Show a frame every `interval` seconds (`frames` of them, or until interrupted)."""
    shown = 0
    while frames is None or shown < frames:
        show(render(snapshot(root)))
        shown += 1
        if frames is None or shown < frames:
            time.sleep(interval)
