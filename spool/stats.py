"""What workers did, counted: tasks done, failed, retried, rejected, recovered, lost (attempts
run again after their worker or handler process died), cancelled, and how long attempts took.
Counters only grow, so they suit Prometheus; status and metrics read them without listing done/.

Each worker keeps its counts in memory and writes them to <root>/.stats/<worker id>.json at most
once a second (atomically) and when it stops. The files of dead workers are folded into
<root>/.stats/archive.json (under a lock) so their counts are kept while the files do not pile up.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spool.faults import Complaint
from spool.fsio import list_names, write_atomic
from spool.layout import FILE_MODE, ensure_dir

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
COUNTERS = (
    "done", "failed", "retried", "rejected", "recovered", "cancelled", "done_removed",
    "failed_removed", "lost", "cancelled_removed", "rate_waits", "cap_waits",
)  # fmt: skip
ARCHIVE = "archive.json"
SLOT_SECONDS = 10  # finished tasks are also counted per 10-second slot, for rates
RECENT_SECONDS = 600  # slots older than this are dropped
log = logging.getLogger(__name__)
FLUSH_SECONDS = 1.0


def stats_dir(root: Path) -> Path:
    return root / ".stats"


@dataclass
class QueueStats:
    """Counts of one queue; `buckets[i]` counts attempts up to DURATION_BUCKETS[i] (the last
    one counts the rest), as in a Prometheus histogram before summing."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    # tasks finished (done or failed) per SLOT_SECONDS slot, by the slot's start (epoch s)
    recent: dict[int, int] = field(default_factory=dict)

    def add(self, other: QueueStats) -> None:
        for key in COUNTERS:
            self.counts[key] += other.counts.get(key, 0)
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.duration_sum += other.duration_sum
        for slot, count in other.recent.items():
            self.recent[slot] = self.recent.get(slot, 0) + count

    def forget_before(self, slot: int) -> None:
        for old in [s for s in self.recent if s < slot]:
            del self.recent[old]

    def finished_last_minute(self, now: float) -> int:
        """Tasks finished in the last six whole slots before `now`'s: a count per minute
        that lags by at most a slot, and needs no earlier sample."""
        current = int(now // SLOT_SECONDS) * SLOT_SECONDS
        return sum(n for slot, n in self.recent.items() if current - 60 <= slot < current)

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "buckets": self.buckets,
            "duration_sum": self.duration_sum,
            "recent": {str(slot): count for slot, count in self.recent.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> QueueStats:
        stats = cls()
        if not isinstance(data, dict):
            return stats
        counts = data.get("counts", {})
        for key in COUNTERS:
            value = counts.get(key, 0) if isinstance(counts, dict) else 0
            stats.counts[key] = value if isinstance(value, int) else 0
        buckets = data.get("buckets")
        if isinstance(buckets, list) and len(buckets) == len(stats.buckets):
            stats.buckets = [b if isinstance(b, int) else 0 for b in buckets]
        total = data.get("duration_sum", 0.0)
        stats.duration_sum = float(total) if isinstance(total, int | float) else 0.0
        recent = data.get("recent")
        if isinstance(recent, dict):
            for slot, count in recent.items():
                if str(slot).isdigit() and isinstance(count, int):
                    stats.recent[int(slot)] = count
        return stats


def bucket_of(seconds: float) -> int:
    for i, bound in enumerate(DURATION_BUCKETS):
        if seconds <= bound:
            return i
    return len(DURATION_BUCKETS)


class WorkerStats:
    """One process's counts (a worker's, or a command's), written to its file now and then."""

    def __init__(self, root: Path, worker_id: str) -> None:
        self.root = root
        self.path = stats_dir(root) / f"{worker_id}.json"
        self.queues: dict[str, QueueStats] = {}
        self.dirty = False
        self.written_at = 0.0
        self.complaint = Complaint()
        self.lock = threading.Lock()  # (a worker counts in its committer's thread too)

    def record(
        self, queue: str, what: str, duration: float | None = None, at: float | None = None
    ) -> None:
        """Count one `what`; a task finished (done or failed) `at` also counts in its slot."""
        with self.lock:
            stats = self.queues.setdefault(queue, QueueStats())
            stats.counts[what] += 1
            if duration is not None:
                stats.buckets[bucket_of(duration)] += 1
                stats.duration_sum += duration
            if at is not None and what in ("done", "failed"):
                slot = int(at // SLOT_SECONDS) * SLOT_SECONDS
                stats.recent[slot] = stats.recent.get(slot, 0) + 1
            self.dirty = True

    def flush(self, now: float, force: bool = False) -> None:
        """Write the counts if due. A disk that refuses (full, failing) is logged at most once
        a minute and the counts stay in memory, written by a later flush: counting never stops
        a worker or a command."""
        if not self.dirty or (not force and now - self.written_at < FLUSH_SECONDS):
            return
        with self.lock:
            for stats in self.queues.values():
                stats.forget_before(int(now) - RECENT_SECONDS)
            data = {queue: stats.to_json() for queue, stats in self.queues.items()}
            payload = json.dumps(data).encode()
            self.dirty = False  # (a count from now on makes it dirty again)
        try:
            ensure_dir(self.path.parent)
            write_atomic(payload, self.path.parent, self.path, durable=False)
        except OSError as exc:
            self.dirty, self.written_at = True, now  # (next try in a second, not at once)
            if self.complaint.due(now):
                log.error("cannot write the counters (kept in memory): %s", exc)
            return
        self.written_at = now
        self.complaint.clear()


def read_file(path: Path) -> dict[str, QueueStats]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(queue): QueueStats.from_json(value) for queue, value in data.items()}


def merge(into: dict[str, QueueStats], more: dict[str, QueueStats]) -> None:
    for queue, stats in more.items():
        into.setdefault(queue, QueueStats()).add(stats)


def load_all(root: Path) -> dict[str, QueueStats]:
    """The counts of every worker that ever ran on this root, per queue."""
    total: dict[str, QueueStats] = {}
    directory = stats_dir(root)
    for name in list_names(directory):
        if name.endswith(".json") and not name.startswith("."):
            merge(total, read_file(directory / name))
    return total


def fold_dead(root: Path, dead_worker_ids: set[str]) -> None:
    """Fold the files of dead workers into the archive, then delete them (under a lock)."""
    directory = stats_dir(root)
    files = [directory / f"{w}.json" for w in dead_worker_ids if (directory / f"{w}.json").exists()]
    if not files:
        return
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(directory / ".archive.lock"), mode=FILE_MODE, timeout=0):
            archive = read_file(directory / ARCHIVE)
            for path in files:
                merge(archive, read_file(path))
            for stats in archive.values():  # (the slots matter only while recent)
                stats.forget_before(max(stats.recent, default=0) - RECENT_SECONDS)
            data = {queue: stats.to_json() for queue, stats in archive.items()}
            # CRASH: the archive holds them before the files go; a crash in between counts a
            # dead worker twice until the next fold, never loses its counts
            write_atomic(json.dumps(data).encode(), directory, directory / ARCHIVE)
            for path in files:
                path.unlink(missing_ok=True)
    except Timeout:
        return  # another process is folding
    except OSError as exc:  # a full disk: the files stay, and are folded next time
        log.warning("cannot fold the counts of dead workers: %s", exc)


def histogram(stats: QueueStats) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs, the last one +Inf."""
    pairs, running = [], 0
    for bound, count in zip([*DURATION_BUCKETS, math.inf], stats.buckets, strict=True):
        running += count
        pairs.append(("+Inf" if math.isinf(bound) else f"{bound:g}", running))
    return pairs


def quantile(buckets: list[int], q: float) -> float | None:
    """The q-quantile (0 < q < 1) of the durations counted in `buckets` (per bucket, not
    cumulative), interpolated inside its bucket as Prometheus' histogram_quantile does; None
    without any count. A quantile in the last bucket (over 300 s) is given as 300 s."""
    total = sum(buckets)
    if total == 0:
        return None
    rank, running, lower = q * total, 0, 0.0
    for bound, count in zip([*DURATION_BUCKETS, math.inf], buckets, strict=True):
        if count and running + count >= rank:
            if math.isinf(bound):
                return float(DURATION_BUCKETS[-1])
            return lower + (bound - lower) * (rank - running) / count
        running += count
        lower = float(bound) if not math.isinf(bound) else lower
    return float(DURATION_BUCKETS[-1])


def stale_files(root: Path, now: float, min_age: float = 60.0) -> set[str]:
    """Worker ids whose stats file was not written for `min_age` seconds (idle, or dead)."""
    directory = stats_dir(root)
    found = set()
    for name in list_names(directory):
        if not name.endswith(".json") or name == ARCHIVE or name.startswith("."):
            continue
        worker_id = name.removesuffix(".json")
        try:
            if now - os.stat(directory / name).st_mtime >= min_age:
                found.add(worker_id)
        except FileNotFoundError:
            continue
    return found


def record_removed(root: Path, removed: Mapping[tuple[str, str], int]) -> None:
    """Count, from a short-lived command, task files it took out of done/ or failed/."""
    counts = command_stats(root)
    for (queue, state), n in removed.items():
        for _ in range(n):
            counts.record(queue, f"{state}_removed")
    counts.flush(0.0, force=True)


def command_stats(root: Path) -> WorkerStats:
    """Counts of a command: its own file, folded into the archive like a dead worker's."""
    import secrets

    return WorkerStats(root, f"cmd-{os.getpid()}-{secrets.token_hex(4)}")
