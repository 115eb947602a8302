"""Pages of one queue's tasks in one state, cheap at a million files.

Entries are paged with a cursor (the last entry of the previous page), never by offset:
waiting states in run order (their names sort that way, the cursor is a name); finished states
by the time they finished (entered done/ or failed/), newest first, the cursor being
"<mtime ns>:<name>", while the directory holds fewer than BIG_LISTING entries; a bigger one is
paged by id instead, newest first for the ids spool assigns (they start with the enqueue time),
since sorting it by time would stat every entry on every view (`Page.by_finish` says which
order a page is in). A page view
lists names only and reads, or stats, just the entries it looks at: the rows it shows, or with
a filter (task name, age) at most SCAN_BUDGET entries, after which the page ends early and its
cursor continues the scan.

Listing a directory of a million names takes most of a second, so for big directories the
first WINDOW names after a cursor are kept (a few windows, by directory mtime, and reused for
up to STALE_SECONDS after the directory changed): paging through them costs no listing at all.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spool.fsio import list_names
from spool.inspect.listing import entry_time, row
from spool.layout import ERROR_SUFFIX, QueueDirs

WINDOW = 10_000
BIG_LISTING = 20_000  # names: below this a listing is cheap enough to make on every view
SCAN_BUDGET = 5_000
STALE_SECONDS = 5.0
MAX_WINDOWS = 8
FINISHED = ("done", "failed")


@dataclass(frozen=True)
class PageQuery:
    state: str
    task: str | None = None
    since_seconds: float | None = None  # at most this old
    older_than_seconds: float | None = None  # at least this old
    after: str | None = None  # the last entry of the previous page
    size: int = 50

    @property
    def filtered(self) -> bool:
        return (
            self.task is not None
            or self.since_seconds is not None
            or self.older_than_seconds is not None
        )


@dataclass
class Page:
    rows: list[dict[str, Any]]
    next_after: str | None  # cursor of the next page; None when this is the last
    scanned: int  # entries looked at
    scan_cut: bool  # the scan budget ended the page (more may match further on)
    by_finish: bool = False  # finished tasks in the order they finished (else by name)


@dataclass
class Window:
    """Up to WINDOW names of a directory, in page order, following `start_after`."""

    mtime_ns: int
    made_at: float
    start_after: str | None
    names: list[str]
    more: bool  # the directory holds further names after the window


def is_entry(name: str) -> bool:
    return not name.startswith(".") and not name.endswith(ERROR_SUFFIX)


def follows(name: str, cursor: str | None, descending: bool) -> bool:
    if cursor is None:
        return True
    return name < cursor if descending else name > cursor


@dataclass
class Lister:
    """Ordered names of state directories, with the windows of big ones kept (thread-safe)."""

    windows: dict[Path, list[Window]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def window(self, directory: Path, descending: bool, after: str | None) -> Window:
        try:
            mtime_ns = os.stat(directory).st_mtime_ns
        except FileNotFoundError:
            return Window(0, 0.0, after, [], False)
        now = time.monotonic()
        with self.lock:
            for kept in self.windows.get(directory, []):
                fresh = kept.mtime_ns == mtime_ns or now - kept.made_at < STALE_SECONDS
                if fresh and self.covers(kept, after, descending):
                    return kept
        names = [n for n in list_names(directory) if is_entry(n)]
        picked = [n for n in names if follows(n, after, descending)] if after else names
        pick = heapq.nlargest if descending else heapq.nsmallest
        window = Window(mtime_ns, now, after, pick(WINDOW, picked), len(picked) > WINDOW)
        if len(names) >= BIG_LISTING:
            with self.lock:
                kept_list = [
                    w
                    for w in self.windows.get(directory, [])
                    if w.mtime_ns == mtime_ns or now - w.made_at < STALE_SECONDS
                ]
                self.windows[directory] = [window, *kept_list][:MAX_WINDOWS]
        return window

    @staticmethod
    def covers(window: Window, after: str | None, descending: bool) -> bool:
        """Whether the names following `after` start inside this window."""
        if after == window.start_after:
            return True
        if after is None or not window.names:
            return False
        return follows(after, window.start_after, descending) and follows(
            window.names[-1], after, descending
        )


def finish_order(directory: Path) -> list[tuple[int, str]] | None:
    """(mtime ns, name) of every entry, newest first; None for a directory of BIG_LISTING
    entries or more (its size in bytes tells before it is listed: ext4 and xfs grow it with
    the names it holds)."""
    try:
        if os.stat(directory).st_size > BIG_LISTING * 64:
            return None
    except FileNotFoundError:
        return []
    names = [name for name in list_names(directory) if is_entry(name)]
    if len(names) >= BIG_LISTING:
        return None
    stamped = []
    for name in names:
        try:
            stamped.append((os.lstat(directory / name).st_mtime_ns, name))
        except FileNotFoundError:  # RACE: purged or retried since the listing
            continue
    stamped.sort(reverse=True)
    return stamped


def finish_cursor(text: str | None) -> tuple[int, str] | None:
    stamp, sep, name = (text or "").partition(":")
    return (int(stamp), name) if sep and stamp.isdigit() else None


def page_by_finish(
    dirs: QueueDirs, stamped: list[tuple[int, str]], query: PageQuery, now: float
) -> Page:
    """A page of a finished state in the order its tasks finished, newest first."""
    directory = dirs.state(query.state)
    after = finish_cursor(query.after)
    entries = [entry for entry in stamped if after is None or entry < after]
    budget = SCAN_BUDGET if query.filtered else query.size
    rows: list[dict[str, Any]] = []
    scanned = 0
    last: tuple[int, str] | None = None
    for entry in entries:
        if len(rows) >= query.size or scanned >= budget:
            break
        scanned += 1
        last = entry
        item = matching_row(dirs, directory, entry[1], query, now)
        if item is not None:
            rows.append(item)
    more = last is not None and last != entries[-1]
    return Page(
        rows=rows,
        next_after=f"{last[0]}:{last[1]}" if more and last is not None else None,
        scanned=scanned,
        scan_cut=query.filtered and scanned >= budget and len(rows) < query.size,
        by_finish=True,
    )


def task_page(lister: Lister, dirs: QueueDirs, query: PageQuery, now: float | None = None) -> Page:
    """One page of the queue's tasks in `query.state` (see the module docstring for order)."""
    now = time.time() if now is None else now
    directory = dirs.state(query.state)
    descending = query.state in FINISHED
    if descending and (query.after is None or finish_cursor(query.after) is not None):
        stamped = finish_order(directory)
        if stamped is not None:
            return page_by_finish(dirs, stamped, query, now)
    budget = SCAN_BUDGET if query.filtered else query.size
    rows: list[dict[str, Any]] = []
    scanned = 0
    last = query.after
    more = True
    while more and len(rows) < query.size and scanned < budget:
        window = lister.window(directory, descending, last)
        start = 0
        if last is not None and window.start_after != last:
            start = next(
                (i for i, n in enumerate(window.names) if follows(n, last, descending)),
                len(window.names),
            )
        names = window.names[start:]
        for name in names:
            if len(rows) >= query.size or scanned >= budget:
                break
            scanned += 1
            last = name
            item = matching_row(dirs, directory, name, query, now)
            if item is not None:
                rows.append(item)
        more = (bool(names) and last != names[-1]) or window.more
        if not names:
            break
    return Page(
        rows=rows,
        next_after=last if more and last is not None else None,
        scanned=scanned,
        scan_cut=query.filtered and scanned >= budget and len(rows) < query.size,
    )


def matching_row(
    dirs: QueueDirs, directory: Path, name: str, query: PageQuery, now: float
) -> dict[str, Any] | None:
    """The row of one entry, or None when it went away or a filter leaves it out."""
    at = entry_time(query.state, directory, name)
    if at is None:  # RACE: it moved on since the listing
        return None
    age = now - at
    if query.since_seconds is not None and age > query.since_seconds:
        return None
    if query.older_than_seconds is not None and age < query.older_than_seconds:
        return None
    item = row(dirs.name, query.state, directory, name, at, now)
    if query.task is not None and item["task"] != query.task:
        return None
    if "unreadable" in item and not (directory / name).exists():
        return None
    return item
