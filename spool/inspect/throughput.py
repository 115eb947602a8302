"""Finished tasks per minute over the last hour, per queue, as the dashboard charts them.

The workers' counters (see stats) only grow; the dashboard samples them now and then and puts
what they grew by into one-minute buckets. When it starts, it fills the hour it has not seen
from the files of small done/ and failed/ directories (the time they entered the state); big
ones are not listed for this, so their chart starts with the dashboard.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from spool import stats
from spool.layout import ERROR_SUFFIX, QueueDirs, existing_queues

MINUTES = 60
SAMPLE_SECONDS = 2.0
BACKFILL_MAX_ENTRIES = 20_000


class Throughput:
    """Per-queue counts of finished tasks in the last MINUTES one-minute buckets."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.buckets: dict[str, dict[int, int]] = {}  # queue -> minute -> finished
        self.last_totals: dict[str, int] = {}
        self.sampled_at = -SAMPLE_SECONDS
        self.lock = threading.Lock()
        self.backfilled: set[str] = set()

    def sample(self, now: float | None = None) -> None:
        """Take in what the counters grew by since the last sample (at most every 2 s)."""
        now = time.time() if now is None else now
        with self.lock:
            if time.monotonic() - self.sampled_at < SAMPLE_SECONDS:
                return
            self.sampled_at = time.monotonic()
            totals = stats.load_all(self.root)
            minute = int(now // 60)
            for queue in existing_queues(self.root):
                counts = totals[queue].counts if queue in totals else None
                total = counts["done"] + counts["failed"] if counts else 0
                if queue not in self.backfilled:
                    self.backfilled.add(queue)
                    self.backfill(queue, now)
                elif total > self.last_totals.get(queue, 0):
                    per_queue = self.buckets.setdefault(queue, {})
                    per_queue[minute] = per_queue.get(minute, 0) + total - self.last_totals[queue]
                self.last_totals[queue] = total
            self.forget_before(minute - MINUTES + 1)

    def backfill(self, queue: str, now: float) -> None:
        dirs = QueueDirs(self.root, queue)
        per_queue = self.buckets.setdefault(queue, {})
        for state in ("done", "failed"):
            directory = dirs.state(state)
            with contextlib.suppress(OSError):
                if os.stat(directory).st_size > BACKFILL_MAX_ENTRIES * 40:
                    continue  # big: not listed for a chart
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.name.startswith(".") or entry.name.endswith(ERROR_SUFFIX):
                            continue
                        with contextlib.suppress(OSError):
                            at = entry.stat(follow_symlinks=False).st_mtime
                            if now - MINUTES * 60 < at <= now:
                                minute = int(at // 60)
                                per_queue[minute] = per_queue.get(minute, 0) + 1

    def forget_before(self, minute: int) -> None:
        for per_queue in self.buckets.values():
            for old in [m for m in per_queue if m < minute]:
                del per_queue[old]

    def series(self, queue: str, now: float | None = None) -> list[int]:
        """Finished per minute, the oldest minute first, the current (partial) one last."""
        now = time.time() if now is None else now
        minute = int(now // 60)
        with self.lock:
            per_queue = dict(self.buckets.get(queue, {}))
        return [per_queue.get(m, 0) for m in range(minute - MINUTES + 1, minute + 1)]
