"""Status: how many tasks each queue holds per state, how old the oldest waiting one is,
and which workers are alive. It reads the directories only, so it works with every worker down.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from spool.claim import live_workers
from spool.layout import CANONICAL_RE, ERROR_SUFFIX, QueueDirs, existing_queues, is_task_name


def count_entries(directory: Path) -> tuple[int, int]:
    """(tasks, rejection notes) in a state directory; names only, no stat."""
    tasks = notes = 0
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return 0, 0
    with entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if name.endswith(ERROR_SUFFIX):
                notes += 1
            else:
                tasks += 1
    return tasks, notes


def oldest_enqueued_at(incoming: Path) -> float | None:
    """Enqueue time of the oldest task in incoming/ (from names; mtime for dropped files)."""
    oldest: float | None = None
    try:
        entries = os.scandir(incoming)
    except FileNotFoundError:
        return None
    with entries:
        for entry in entries:
            if not is_task_name(entry.name):
                continue
            match = CANONICAL_RE.fullmatch(entry.name)
            if match:
                at = int(match.group(2)) / 1_000_000
            else:
                try:
                    at = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
            oldest = at if oldest is None else min(oldest, at)
    return oldest


def queue_status(dirs: QueueDirs, now: float) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for state in ("incoming", "delayed", "processing", "done"):
        counts[state] = count_entries(dirs.state(state))[0]
    failed, rejected = count_entries(dirs.failed)
    counts["failed"] = failed
    counts["rejected"] = rejected  # of the failed: files that were not runnable tasks
    oldest = oldest_enqueued_at(dirs.incoming)
    counts["oldest_waiting_seconds"] = None if oldest is None else round(max(0.0, now - oldest), 3)
    counts["paused"] = dirs.is_paused()
    return counts


def spool_status(root: Path, now: float | None = None) -> dict[str, Any]:
    """The data of `spool status --json`."""
    now = time.time() if now is None else now
    queues = {name: queue_status(QueueDirs(root, name), now) for name in existing_queues(root)}
    return {"root": str(root), "queues": queues, "workers": live_workers(root)}
