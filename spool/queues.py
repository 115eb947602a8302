"""A worker's view of the queues it serves: one QueueIndex each (see index), and the choice of
the next task over all of them.

The queues are the ones a worker was started with (`spool worker -q`), or every queue of the
root, found as they appear (a new directory's event, or a rescan). Event hints keep each index
current between rescans (see watch); delayed tasks are made ready when they fall due, and files
put back while still being written (see settle) when their pause is over. The next claim takes
the best ready task of any queue that is not paused: higher priority first, then first enqueued.

In shared mode (several hosts), each rescan gives this worker its share of the ready tasks,
so that workers on several hosts do not all race for the same names (see QueueIndex.choose).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from spool.claim import Claim, claim
from spool.index import QueueIndex
from spool.layout import existing_queues, queue_dirs
from spool.watch import Hints, Watcher
from spool.workers import worker_ids


class Queues:
    """The indexes of the queues one worker serves (`fixed`, or all when empty)."""

    def __init__(
        self,
        root: Path,
        fixed: list[str],
        worker_id: str,
        max_file_bytes: int,
        watcher: Watcher,
        shared: bool = False,
    ) -> None:
        self.root, self.fixed, self.worker_id = root, fixed, worker_id
        self.max_file_bytes, self.watcher, self.shared = max_file_bytes, watcher, shared
        self.indexes: dict[str, QueueIndex] = {}

    def __iter__(self) -> Iterator[QueueIndex]:
        return iter(list(self.indexes.values()))

    def __getitem__(self, queue: str) -> QueueIndex:
        return self.indexes[queue]

    def names(self) -> list[str]:
        return list(self.indexes)

    def add(self, queue: str, now: float, now_mono: float) -> None:
        """Serve `queue` too: list it and watch it."""
        if queue in self.indexes:
            return
        dirs = queue_dirs(self.root, queue).create()
        index = QueueIndex(dirs, self.max_file_bytes, stale_listings=self.shared)
        index.rescan(now, now_mono)
        self.indexes[queue] = index
        self.watcher.add(queue)

    def discover(self, now: float, now_mono: float) -> None:
        """Serving all queues: add the ones that appeared."""
        if self.fixed:
            return
        for queue in existing_queues(self.root):
            self.add(queue, now, now_mono)

    def rescan_all(self, now: float, now_mono: float) -> None:
        """List every queue again (and find new ones): what the event hints missed."""
        self.discover(now, now_mono)
        shard = self.shard() if self.shared else None
        for index in self.indexes.values():
            index.set_shard(shard)
            index.rescan(now, now_mono)

    def shard(self) -> tuple[int, int] | None:
        """Shared mode: this worker's share of the ready tasks (its slot, live workers)."""
        live = worker_ids(self.root)
        if self.worker_id not in live:
            return None
        return live.index(self.worker_id), len(live)

    def absorb(self, hints: Hints, now: float, now_mono: float) -> bool:
        """Take in the event hints that arrived; True when events were lost (rescan now)."""
        while hints.arrived:
            queue, state, name = hints.arrived.popleft()
            index = self.indexes.get(queue)
            if index is None:
                continue
            if state == "incoming":
                index.add_ready(name)
            elif state == "delayed":
                index.add_delayed(name)
            else:
                index.paused = index.dirs.is_paused()
        if hints.new_queue:
            hints.new_queue = False
            self.discover(now, now_mono)
        lost, hints.rescan = hints.rescan, False
        return lost

    def promote_due(self, now: float, now_mono: float) -> None:
        """Make ready what has fallen due: delayed tasks, and files put back (spool.settle)."""
        now_us = int(now * 1_000_000)
        for index in self.indexes.values():
            index.return_later(now_mono)
            for entry in index.pop_due(now_us, now_mono):
                name = entry.partition("@")[2]
                try:
                    os.rename(index.dirs.delayed / entry, index.dirs.incoming / name)
                except FileNotFoundError:  # RACE: another worker promoted or cancelled it
                    continue
                index.add_ready(name)

    def claim_next(self, now_mono: float) -> Claim | None:
        """Claim the best ready task over all queues: higher priority, then first enqueued."""
        while True:
            best: QueueIndex | None = None
            for index in self.indexes.values():
                key = index.peek_ready(now_mono)
                if key is not None and index.paused:
                    continue
                if key is not None and (best is None or key < (best.peek_ready(now_mono) or "")):
                    best = index
            if best is None:
                return None
            name = best.pop_ready(now_mono)
            if name is None:
                continue
            taken = claim(best.dirs, name, self.worker_id)
            if taken is None:
                best.forget(name, now_mono)
                continue
            return taken

    def put_back_wait(self, now_mono: float) -> float | None:
        """Seconds until the first file put back (spool.settle) is to be read again, if any."""
        times = [min(index.later.values()) for index in self.indexes.values() if index.later]
        return min(times) - now_mono if times else None

    def next_wait(self, now: float, now_mono: float) -> float | None:
        """Seconds until something falls due (a delayed task, a file put back), if anything."""
        waits = []
        for index in self.indexes.values():
            due = index.next_due_us()
            if due is not None:
                waits.append(max(0.0, due / 1_000_000 - now))
        put_back = self.put_back_wait(now_mono)
        if put_back is not None:
            waits.append(put_back)
        return min(waits) if waits else None
