"""Search the spool for tasks by id, task name or any text of their file (an argument, an
error message), as the dashboard's search box does.

An exact id is looked up first (in any queue and state). Otherwise the entries of every queue
are looked at, the states a person looks for first first (processing, incoming, delayed,
failed, done), finished ones newest first; a name matches without a read, and at most
READ_BUDGET files are read for the rest, after which the search says it stopped early.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spool.envelope import is_valid_id
from spool.fsio import UnreadableFile, list_names, read_regular
from spool.inspect.listing import entry_time, row
from spool.inspect.paging import is_entry
from spool.layout import QueueDirs, existing_queues
from spool.lookup import locate

ORDER = ("processing", "incoming", "delayed", "failed", "done")
READ_BUDGET = 5_000
NAMES_PER_STATE = 20_000  # of a big directory, the first names in its order
READ_LIMIT = 256 * 1024


@dataclass(frozen=True)
class Found:
    rows: list[dict[str, Any]]
    read: int  # files read
    cut: bool  # the read budget ended the search: more may match


def search(root: Path, text: str, now: float | None = None, limit: int = 50) -> Found:
    """Tasks whose id, task name or file contains `text` (any case), at most `limit`."""
    now = time.time() if now is None else now
    needle = text.strip().lower()
    if not needle:
        return Found([], 0, False)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    if is_valid_id(text.strip()) and (exact := locate(root, text.strip())) is not None:
        directory = exact.path.parent
        at = entry_time(exact.state, directory, exact.path.name) or now
        rows.append(row(exact.queue, exact.state, directory, exact.path.name, at, now))
        seen.add(str(exact.path))
    read = 0
    for queue, state, directory, name in entries(root):
        if len(rows) >= limit:
            break
        if str(directory / name) in seen:
            continue
        if needle not in name.lower():
            if read >= READ_BUDGET:
                return Found(rows, read, True)
            read += 1
            if needle not in file_text(directory / name):
                continue
        when = entry_time(state, directory, name)
        if when is not None:  # (None: it moved on meanwhile)
            rows.append(row(queue, state, directory, name, when, now))
    return Found(rows, read, False)


def entries(root: Path) -> Iterator[tuple[str, str, Path, str]]:
    queues = existing_queues(root)
    for state in ORDER:
        for queue in queues:
            directory = QueueDirs(root, queue).state(state)
            names = [n for n in list_names(directory) if is_entry(n)]
            pick = heapq.nlargest if state in ("done", "failed") else heapq.nsmallest
            for name in pick(NAMES_PER_STATE, names):
                yield queue, state, directory, name


def file_text(path: Path) -> str:
    try:
        data = read_regular(path, READ_LIMIT)[0]
    except (OSError, UnreadableFile):
        return ""
    return data.decode("utf-8", errors="replace").lower()
