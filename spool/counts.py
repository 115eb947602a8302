"""How many tasks done/ and failed/ hold, answered fast even at a million files.

A small directory is counted (names only). A big one (BIG_ENTRIES or more at its last count)
is counted now and then, and in between its count is carried forward with the counters every
process keeps of what it put in or took out (see stats):

    count now = count at the last count + (in - out now) - (in - out at the last count)

The last count is kept in <queue>/.counts.json with the directory's mtime at that moment: while
the mtime is unchanged, the count is exact. Workers count big directories again every
RECOUNT_SECONDS, in a background thread, one worker at a time, which also corrects what no
counter saw (files deleted by hand).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from spool.fsio import write_atomic
from spool.layout import ERROR_SUFFIX, FILE_MODE, QueueDirs, is_cancelled_marker
from spool.stats import QueueStats

BIG_ENTRIES = 50_000
RECOUNT_SECONDS = 600.0
BIG_DIRECTORY_BYTES = 1 << 20  # an ext4 directory this size holds some 30,000 names or more
CACHE = ".counts.json"
FINISHED = ("done", "failed")


class Counted(NamedTuple):
    """What a state directory holds: task files, rejection notes and cancelled markers (only
    failed/ has those two; its task files include the rejected and the cancelled ones)."""

    tasks: int
    notes: int = 0
    cancelled: int = 0


def net_added(state: str, stats: QueueStats | None) -> int:
    """Entries the counters say were added to `state` minus those removed, ever (state
    "cancelled": the cancelled markers in failed/)."""
    if stats is None:
        return 0
    c = stats.counts
    if state == "done":
        return c["done"] - c["done_removed"]
    if state == "cancelled":
        return c["cancelled"] - c["cancelled_removed"]
    return c["failed"] + c["rejected"] + c["cancelled"] - c["failed_removed"]


def count_exact(directory: Path) -> Counted:
    """What a state directory holds; names only, no stat."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return Counted(0)
    notes = sum(1 for name in names if name.endswith(ERROR_SUFFIX))
    hidden = sum(1 for name in names if name.startswith("."))
    cancelled = sum(1 for name in names if is_cancelled_marker(name))
    return Counted(len(names) - notes - hidden, notes, cancelled)


def read_cache(dirs: QueueDirs) -> dict[str, Any]:
    try:
        data = json.loads((dirs.base / CACHE).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(dirs: QueueDirs, state: str, entry: Mapping[str, Any] | None) -> None:
    """Remember (or, with None, forget) the count of one state directory."""
    data = read_cache(dirs)
    if entry is None:
        data.pop(state, None)
    else:
        data[state] = dict(entry)
    write_atomic(json.dumps(data).encode(), dirs.tmp, dirs.base / CACHE, durable=False)


def finished_count(dirs: QueueDirs, state: str, stats: QueueStats | None) -> Counted:
    """What done/ or failed/ holds, counted or carried forward."""
    directory = dirs.state(state)
    try:
        mtime_ns = os.stat(directory).st_mtime_ns
    except FileNotFoundError:
        return Counted(0)
    cached = read_cache(dirs).get(state)
    if isinstance(cached, dict) and cached.get("count", 0) >= BIG_ENTRIES:
        notes, cancelled = int(cached.get("notes", 0)), int(cached.get("cancelled", 0))
        if cached.get("mtime_ns") == mtime_ns:
            return Counted(int(cached["count"]), notes, cancelled)
        carried = int(cached["count"]) + net_added(state, stats) - int(cached.get("net_added", 0))
        if state == "failed":
            cancelled += net_added("cancelled", stats) - int(cached.get("net_cancelled", 0))
        return Counted(max(0, carried), notes, max(0, cancelled))
    return count_and_remember(dirs, state, stats, mtime_ns)


def count_and_remember(
    dirs: QueueDirs, state: str, stats: QueueStats | None, mtime_ns: int
) -> Counted:
    """Count exactly; remember the count when the directory is big."""
    counted = count_exact(dirs.state(state))
    tasks, notes = counted.tasks, counted.notes
    if tasks >= BIG_ENTRIES:
        entry = {"count": tasks, "notes": notes, "mtime_ns": mtime_ns, "counted_at": time.time(),
                 "net_added": net_added(state, stats), "cancelled": counted.cancelled,
                 "net_cancelled": net_added("cancelled", stats)}  # fmt: skip
        with contextlib.suppress(OSError):  # a read-only status: the next one counts again
            write_cache(dirs, state, entry)
    elif state in read_cache(dirs):  # it became small: count it every time again
        with contextlib.suppress(OSError):
            write_cache(dirs, state, None)
    return counted


class Recounter:
    """A worker's background recount of big, stale done/ and failed/ directories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.thread: threading.Thread | None = None

    def maybe_start(self, queues: list[str], now: float) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        stale = [
            (q, s)
            for q in queues
            for s in FINISHED
            if self.is_stale(QueueDirs(self.root, q), s, now)
        ]
        if stale:
            self.thread = threading.Thread(
                target=self.recount, args=(stale,), name="spool-recount", daemon=True
            )
            self.thread.start()

    def is_stale(self, dirs: QueueDirs, state: str, now: float) -> bool:
        cached = read_cache(dirs).get(state)
        if not isinstance(cached, dict):  # never counted: worth it when the directory is big
            try:
                return os.stat(dirs.state(state)).st_size >= BIG_DIRECTORY_BYTES
            except FileNotFoundError:
                return False
        if cached.get("count", 0) < BIG_ENTRIES:
            return False
        return now - float(cached.get("counted_at", 0.0)) >= RECOUNT_SECONDS

    def recount(self, stale: list[tuple[str, str]]) -> None:
        from filelock import FileLock, Timeout

        from spool.stats import load_all

        try:
            with FileLock(str(self.root / ".counts.lock"), mode=FILE_MODE, timeout=0):
                for queue, state in stale:
                    dirs = QueueDirs(self.root, queue)
                    if not self.is_stale(dirs, state, time.time()):
                        continue  # another worker just did it
                    mtime_ns = os.stat(dirs.state(state)).st_mtime_ns
                    count_and_remember(dirs, state, load_all(self.root).get(queue), mtime_ns)
        except (Timeout, OSError):
            return

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=30)
