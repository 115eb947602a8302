"""Status: how many tasks each queue holds per state (cancelled tasks apart from the failed
ones, though both rest in failed/), how old the oldest waiting one is, and which workers are
alive. It reads the directories only, so it works with every worker down.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from spool.counts import count_exact, finished_count
from spool.layout import CANONICAL_RE, QueueDirs, existing_queues
from spool.manage import paused_info
from spool.stats import QueueStats, load_all
from spool.workers import live_workers, waiting_since


def waiting(incoming: Path) -> tuple[int, float | None]:
    """How many tasks incoming/ holds, and the enqueue time of the oldest.

    One listing; the time comes from the canonical names (fixed-width µs, so the smallest
    string is the oldest) and, for dropped files with other names, from their mtime.
    """
    try:
        names = os.listdir(incoming)
    except FileNotFoundError:
        return 0, None
    tasks = [name for name in names if name.endswith(".json") and not name.startswith(".")]
    shaped = [name for name in tasks if name[1:2] == "_" and name[18:19] == "_"]  # cheap test
    candidates = []
    stamps = [name[2:18] for name in shaped]
    if stamps and (oldest := min(stamps)).isdigit():
        candidates.append(int(oldest) / 1_000_000)
    if len(shaped) < len(tasks) or not candidates:  # dropped files: their mtime
        for name in tasks:
            if not CANONICAL_RE.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    candidates.append(os.lstat(incoming / name).st_mtime)
    return len(tasks), min(candidates) if candidates else None


def queue_status(dirs: QueueDirs, now: float, stats: QueueStats | None = None) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    counts["incoming"], oldest = waiting(dirs.incoming)
    for state in ("delayed", "processing"):
        counts[state] = count_exact(dirs.state(state))[0]
    counts["done"] = finished_count(dirs, "done", stats).tasks
    failed = finished_count(dirs, "failed", stats)
    counts["failed"] = max(0, failed.tasks - failed.cancelled)
    counts["rejected"] = failed.notes  # of the failed: files that were not runnable tasks
    counts["cancelled"] = failed.cancelled  # beside the failed, in failed/ (not failures)
    counts["oldest_waiting_seconds"] = None if oldest is None else round(max(0.0, now - oldest), 3)
    counts["paused"] = dirs.is_paused()
    counts["pause"] = paused_info(dirs) if counts["paused"] else None  # paused_at, reason
    if stats is not None:  # starts that waited for a rate slot, tasks put back at a full cap
        counts["rate_waits"] = stats.counts.get("rate_waits", 0)
        counts["cap_waits"] = stats.counts.get("cap_waits", 0)
    return counts


def spool_status(
    root: Path, now: float | None = None, totals: dict[str, QueueStats] | None = None
) -> dict[str, Any]:
    """The data of `spool status --json`; `totals`: the workers' counts, if already loaded."""
    now = time.time() if now is None else now
    totals = load_all(root) if totals is None else totals
    queues = {
        name: queue_status(QueueDirs(root, name), now, totals.get(name))
        for name in existing_queues(root)
    }
    return {"root": str(root), "queues": queues, "workers": waiting_outcomes(root, now)}


def waiting_outcomes(root: Path, now: float) -> list[dict[str, Any]]:
    """The live workers, each with `outcomes_waiting` (it holds finished outcomes the disk
    refused, and claims nothing until they are written) and since how many seconds."""
    workers = live_workers(root)
    for worker in workers:
        since = waiting_since(root, str(worker["id"]))
        worker["outcomes_waiting"] = since is not None
        worker["outcomes_waiting_seconds"] = None if since is None else round(now - since, 3)
    return workers
