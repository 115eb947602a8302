"""Finished tasks per minute over the last hour, per queue, as the dashboard charts them, and
how long they ran (p50 and p95 per minute, from what the duration histogram grew by).

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
        # queue -> minute -> attempts per duration bucket (stats.DURATION_BUCKETS), since start
        self.durations: dict[str, dict[int, list[int]]] = {}
        self.last_durations: dict[str, list[int]] = {}
        self.sampled_at = -SAMPLE_SECONDS
        self.lock = threading.Lock()
        self.backfilled: set[str] = set()

    def sample(
        self, now: float | None = None, totals: dict[str, stats.QueueStats] | None = None
    ) -> None:
        """Take in what the counters grew by since the last sample (at most every 2 s);
        `totals`: the workers' counts (stats.load_all), if the caller has just loaded them."""
        now = time.time() if now is None else now
        with self.lock:
            if time.monotonic() - self.sampled_at < SAMPLE_SECONDS:
                return
            self.sampled_at = time.monotonic()
            totals = stats.load_all(self.root) if totals is None else totals
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
                if queue in totals:
                    self.take_durations(queue, totals[queue].buckets, minute)
            self.forget_before(minute - MINUTES + 1)

    def take_durations(self, queue: str, buckets: list[int], minute: int) -> None:
        before = self.last_durations.get(queue)
        self.last_durations[queue] = list(buckets)
        if before is None:
            return  # (the first sample: what came before the dashboard is not spread over time)
        grown = [max(0, now - then) for now, then in zip(buckets, before, strict=True)]
        if any(grown):
            per_minute = self.durations.setdefault(queue, {}).setdefault(minute, [0] * len(grown))
            for i, n in enumerate(grown):
                per_minute[i] += n

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
        for durations in self.durations.values():
            for old in [m for m in durations if m < minute]:
                del durations[old]

    def series(self, queue: str, now: float | None = None) -> list[int]:
        """Finished per minute, the oldest minute first, the current (partial) one last."""
        now = time.time() if now is None else now
        minute = int(now // 60)
        with self.lock:
            per_queue = dict(self.buckets.get(queue, {}))
        return [per_queue.get(m, 0) for m in range(minute - MINUTES + 1, minute + 1)]

    def runtimes(self, queue: str, now: float | None = None) -> list[tuple[float, float] | None]:
        """(p50, p95) of the attempts finished in each minute, the oldest minute first; None
        for a minute without any (or before the dashboard started)."""
        now = time.time() if now is None else now
        minute = int(now // 60)
        with self.lock:
            per_queue = {m: list(b) for m, b in self.durations.get(queue, {}).items()}
        series: list[tuple[float, float] | None] = []
        for m in range(minute - MINUTES + 1, minute + 1):
            buckets = per_queue.get(m)
            p50 = stats.quantile(buckets, 0.5) if buckets else None
            p95 = stats.quantile(buckets, 0.95) if buckets else None
            series.append(None if p50 is None or p95 is None else (p50, p95))
        return series
