"""A worker's in-memory view of one queue: what is ready (in order) and when delayed tasks fall due.

Built from directory listings (names only) and kept current by event hints, so claiming the
next task never lists the directory. Entries are hints too: a name another worker already
took fails its claim with ENOENT and is dropped.

Delayed tasks: only the DELAYED_WINDOW earliest are held (a bounded heap built by streaming
the directory listing), so a worker's memory does not grow with 100,000 tasks scheduled for
next week; when the held ones are used up the window is built again from the directory.

Order: the canonical incoming name starts with 9-priority and the enqueue time in µs, fixed
width, so sorting names sorts the queue. A dropped file with another name is read once
(no-follow, size-limited) to learn its priority; its enqueue time is its mtime.

The index reads no clock: the worker passes `now` (epoch seconds, compared with file times)
and `now_mono` (time.monotonic(), for how long a name is left alone).
"""

from __future__ import annotations

import heapq
import os
import zlib
from dataclasses import dataclass, field
from typing import TypeVar

from spool import envelope
from spool.envelope import FieldError
from spool.fsio import UnreadableFile, list_names, read_regular
from spool.layout import CANONICAL_RE, QueueDirs, is_task_name, split_delayed

DELAYED_WINDOW = 1000
FULL_SCAN_SECONDS = 60.0  # delayed/ is listed again at least this often, changed or not
STEAL_PAUSE_SECONDS = 0.5  # after taking from another worker's share failed
GONE_SECONDS = 30.0  # longer than a network mount's listing cache (sshfs: 20 s)
SETTLED_NS = 1_000_000_000  # a directory mtime this old can be trusted to mean "unchanged"


@dataclass
class QueueIndex:
    """Ready and delayed tasks of one queue, as this worker last saw them."""

    dirs: QueueDirs
    max_file_bytes: int
    ready: list[tuple[str, str]] = field(default_factory=list)  # (sort key, name)
    ready_names: set[str] = field(default_factory=set)  # in `ready` or `others`
    # Shared mode: the ready tasks are split among the live workers by a hash of the name
    # (this worker's slot, how many); each takes its own share first and the others' when
    # its own is empty, or when theirs holds a higher priority (see choose).
    shard: tuple[int, int] | None = None
    others: list[tuple[str, str]] = field(default_factory=list)  # other workers' share
    steal_after: float = 0.0  # (monotonic) before which `others` are left alone
    delayed: list[tuple[int, str]] = field(default_factory=list)  # (due µs, entry)
    delayed_names: set[str] = field(default_factory=set)
    # None: every delayed entry is held; else entries due after this (µs) may be on disk only
    delayed_limit: int | None = None
    delayed_mtime: int | None = None  # delayed/'s mtime (ns) when last listed, if settled then
    delayed_listed: float = 0.0  # (monotonic) when last listed
    paused: bool = False  # as of the last rescan (or pause event)
    # Shared mode: a network mount's listing can lag (sshfs: up to 20 s), so names whose
    # claim found them gone are skipped by rescans while listings still show them.
    stale_listings: bool = False
    gone: dict[str, float] = field(default_factory=dict)  # name -> (monotonic) it failed
    # Files put back because they are still being written (spool.settle): left alone until
    # then, whatever events and listings say.
    later: dict[str, float] = field(default_factory=dict)  # name -> (monotonic) until
    # Tasks put back for the workers that know their name (a deploy under way): left alone
    # the same way, but a burst worker does not wait for them.
    held: dict[str, float] = field(default_factory=dict)  # name -> (monotonic) until

    def add_ready(self, name: str) -> None:
        if name in self.ready_names or name in self.later or name in self.held:
            return
        if not is_task_name(name):
            return
        key = self.sort_key(name)
        if key is None:
            return
        self.ready_names.add(name)
        heapq.heappush(self.ready if self.mine(name) else self.others, (key, name))

    def mine(self, name: str) -> bool:
        return self.shard is None or zlib.crc32(name.encode()) % self.shard[1] == self.shard[0]

    def set_shard(self, shard: tuple[int, int] | None) -> None:
        """Split the ready tasks anew (the live workers changed)."""
        if shard == self.shard:
            return
        self.shard = shard
        entries, self.ready, self.others = self.ready + self.others, [], []
        for key, name in entries:
            (self.ready if self.mine(name) else self.others).append((key, name))
        heapq.heapify(self.ready)
        heapq.heapify(self.others)

    def add_delayed(self, entry: str) -> None:
        parts = split_delayed(entry)
        if parts is None or entry in self.delayed_names:
            return
        due = parts[0]
        if self.delayed_limit is not None and due > self.delayed_limit:
            return  # beyond the held window: the next window build finds it
        if len(self.delayed) >= 2 * DELAYED_WINDOW:
            self.delayed_limit = due if self.delayed_limit is None else min(due, self.delayed_limit)
            return
        self.delayed_names.add(entry)
        heapq.heappush(self.delayed, (due, entry))

    def rescan_delayed(self, now: float, now_mono: float, force: bool = False) -> None:
        """Hold the DELAYED_WINDOW earliest entries of delayed/ (one streamed listing).

        Skipped while the directory's mtime shows no entry came or went since the last
        listing (an idle worker over 100,000 tasks scheduled for later lists nothing), unless
        forced or FULL_SCAN_SECONDS have passed.
        """
        try:
            mtime: int | None = os.stat(self.dirs.delayed).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if (
            not force
            and mtime is not None
            and mtime == self.delayed_mtime
            and now_mono - self.delayed_listed < FULL_SCAN_SECONDS
        ):
            return
        settled = mtime is not None and now * 1e9 - mtime >= SETTLED_NS
        self.delayed_mtime = mtime if settled else None
        self.delayed_listed = now_mono
        window: list[tuple[int, str]] = []  # (-due, entry): a max-heap of the earliest ones
        total = 0
        try:
            listing = os.scandir(self.dirs.delayed)
        except FileNotFoundError:
            listing = None
        if listing is not None:
            with listing:
                for item in listing:
                    parts = split_delayed(item.name)
                    if parts is None:
                        continue
                    total += 1
                    candidate = (-parts[0], item.name)
                    if len(window) < DELAYED_WINDOW:
                        heapq.heappush(window, candidate)
                    elif candidate > window[0]:
                        heapq.heapreplace(window, candidate)
        self.delayed = [(-due, entry) for due, entry in window]
        heapq.heapify(self.delayed)
        self.delayed_names = {entry for _, entry in window}
        self.delayed_limit = -window[0][0] if total > len(window) else None

    def rescan(self, now: float, now_mono: float) -> None:
        """Bring both views up to date with the directories (names only).

        Names not seen before are added; names that are gone stay until they are popped (a
        failed claim drops them), unless they outnumber the live ones: then the view is rebuilt.
        """
        self.paused = self.dirs.is_paused()
        present = {n for n in list_names(self.dirs.incoming) if is_task_name(n)}
        if self.gone:
            present = self.without_gone(present, now_mono)
        if len(self.ready_names - present) > len(present):
            self.ready, own = only_present(self.ready, present)
            self.others, theirs = only_present(self.others, present)
            self.ready_names = own | theirs
        for name in present - self.ready_names:
            self.add_ready(name)
        self.rescan_delayed(now, now_mono)

    def forget(self, name: str, now_mono: float) -> None:
        """A claim of `name` found it gone (another worker took it)."""
        if self.stale_listings:
            self.gone[name] = now_mono
        if not self.mine(name):  # its owner is at work (our listing may be stale): leave theirs
            self.steal_after = now_mono + STEAL_PAUSE_SECONDS

    def look_again(self, name: str, seconds: float, now_mono: float) -> None:
        """Leave `name` (popped and put back) alone for `seconds`."""
        self.later[name] = now_mono + seconds

    def hold(self, name: str, seconds: float, now_mono: float) -> None:
        """Leave `name` (put back for other workers) alone for `seconds`."""
        self.held[name] = now_mono + seconds

    def return_later(self, now_mono: float) -> None:
        """Make the names whose time has come ready again."""
        for waiting in (self.later, self.held):
            for name, at in list(waiting.items()):
                if at <= now_mono:
                    del waiting[name]
                    self.add_ready(name)

    def without_gone(self, present: set[str], now_mono: float) -> set[str]:
        """`present` less the names known gone; a name is let go when a listing no longer
        shows it, or after GONE_SECONDS (it may have come back: a recovered task keeps its
        name)."""
        for name, since in list(self.gone.items()):
            if name not in present or now_mono - since > GONE_SECONDS:
                del self.gone[name]
        return present - self.gone.keys()

    def choose(self, now_mono: float) -> list[tuple[str, str]] | None:
        """The heap the next claim comes from: this worker's share, unless it is empty or
        another share's head has a higher priority (the key's first character)."""
        if not self.others or now_mono < self.steal_after:
            return self.ready or None
        if not self.ready or self.others[0][0][0] < self.ready[0][0][0]:
            return self.others
        return self.ready

    def peek_ready(self, now_mono: float) -> str | None:
        heap = self.choose(now_mono)
        return heap[0][0] if heap else None

    def pop_ready(self, now_mono: float) -> str | None:
        heap = self.choose(now_mono)
        if not heap:
            return None
        _, name = heapq.heappop(heap)
        self.ready_names.discard(name)
        return name

    def pop_due(self, now_us: int, now_mono: float) -> list[str]:
        """Delayed entries due by `now_us`, earliest first (at most one window's worth)."""
        if self.delayed_limit is not None and now_us >= self.delayed_limit:
            # the held window is used up: take the next one
            self.rescan_delayed(now_us / 1_000_000, now_mono, force=True)
        due = []
        while self.delayed and self.delayed[0][0] <= now_us:
            _, entry = heapq.heappop(self.delayed)
            self.delayed_names.discard(entry)
            due.append(entry)
        return due

    def next_due_us(self) -> int | None:
        """When the earliest held entry falls due, or the window must be built again."""
        due = self.delayed[0][0] if self.delayed else None
        if self.delayed_limit is not None and (due is None or self.delayed_limit < due):
            return self.delayed_limit
        return due

    def sort_key(self, name: str) -> str | None:
        """The name itself when canonical; else built from the file's priority and mtime."""
        if CANONICAL_RE.fullmatch(name):
            return name
        path = self.dirs.incoming / name
        priority = 0
        try:
            data, st = read_regular(path, self.max_file_bytes)
            priority = envelope.priority_of(envelope.parse_task_bytes(data))
            mtime = st.st_mtime
        except FileNotFoundError:
            return None
        except (UnreadableFile, FieldError, OSError):
            try:
                mtime = os.lstat(path).st_mtime
            except OSError:
                return None
        return f"{9 - priority}_{int(mtime * 1_000_000):016d}_~{name}"


K = TypeVar("K")


def only_present(
    heap: list[tuple[K, str]], present: set[str]
) -> tuple[list[tuple[K, str]], set[str]]:
    """A heap and its name set without the names that are gone."""
    kept = [(key, name) for key, name in heap if name in present]
    heapq.heapify(kept)
    return kept, {name for _, name in kept}
