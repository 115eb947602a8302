"""Retention: finished tasks older than the config's [retention] ages are deleted by the workers,
a few thousand directory entries per second, so that no one ever waits on a long purge.

One worker at a time does it (a lock it does not wait for); each pass walks done/ and failed/ of
every served queue with scandir, resuming where the previous step stopped.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from spool.layout import ERROR_SUFFIX, FILE_MODE, QueueDirs, is_cancelled_marker

STEP_ENTRIES = 5000  # entries looked at per step (a stat each)
PASS_GAP_SECONDS = 60.0  # a finished pass starts again after this long


class Retention:
    """Deletes done/failed entries older than their state's age, in bounded steps."""

    def __init__(self, root: Path, ages: Mapping[str, float]) -> None:
        self.root, self.ages = root, dict(ages)
        self.walks: dict[tuple[str, str], Iterator[os.DirEntry[str]]] = {}
        self.next_pass: dict[tuple[str, str], float] = {}

    def step(self, queues: list[str], now: float | None = None) -> dict[tuple[str, str], int]:
        """Look at up to STEP_ENTRIES entries; return the tasks deleted per (queue, state)."""
        from filelock import FileLock, Timeout

        now = time.time() if now is None else now
        try:
            lock = FileLock(str(self.root / ".retention.lock"), mode=FILE_MODE, timeout=0)
            lock.acquire()
        except Timeout:
            return {}  # another worker is at it
        try:
            return self.walk(queues, now)
        finally:
            lock.release()

    def walk(self, queues: list[str], now: float) -> dict[tuple[str, str], int]:
        budget: int = STEP_ENTRIES
        deleted: dict[tuple[str, str], int] = {}
        for queue in queues:
            for state, age in self.ages.items():
                key = (queue, state)
                if budget <= 0 or self.next_pass.get(key, 0.0) > now:
                    continue
                entries = self.walks.get(key) or self.start(
                    QueueDirs(self.root, queue).state(state)
                )
                self.walks[key] = entries
                for entry in entries:
                    budget -= 1
                    removed = is_older(entry, now - age) and remove(entry)
                    if removed and is_cancelled_marker(entry.name):
                        counted = (queue, "cancelled")
                        deleted[counted] = deleted.get(counted, 0) + 1
                    elif removed and not entry.name.endswith(ERROR_SUFFIX):
                        deleted[key] = deleted.get(key, 0) + 1
                    if budget <= 0:
                        break
                else:  # the pass over this directory is complete
                    del self.walks[key]
                    self.next_pass[key] = now + PASS_GAP_SECONDS
        return deleted

    @staticmethod
    def start(directory: Path) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as entries:
                yield from entries
        except FileNotFoundError:
            return


def is_older(entry: os.DirEntry[str], cutoff: float) -> bool:
    """Whether a visible entry (or a cancelled marker) last changed before `cutoff` (False if
    it is gone)."""
    if entry.name.startswith(".") and not is_cancelled_marker(entry.name):
        return False
    try:
        return entry.stat(follow_symlinks=False).st_mtime < cutoff
    except FileNotFoundError:
        return False


def remove(entry: os.DirEntry[str]) -> bool:
    """Delete a finished entry: a file, or a rejected directory named *.json; and what is kept
    beside a task file (its attempts' output, see layout)."""
    try:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)
    except FileNotFoundError:
        return False
    if entry.name.endswith(".json") and not entry.name.endswith(ERROR_SUFFIX):
        state_dir = Path(entry.path).parent
        beside = QueueDirs(state_dir.parent.parent, state_dir.parent.name).beside(entry.name[:-5])
        shutil.rmtree(beside, ignore_errors=True)  # (usually absent: one failed lstat)
    return True
