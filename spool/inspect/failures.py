"""The failed tasks of a queue grouped by what failed them: (task name, error type), each group
with its count, its newest message and its ids, for the dashboard's failed view and its bulk
retry. Cancelled tasks are no failures and are left out; rejected files form their own groups
(error type "Rejected"), which a retry would only reject again.

It reads at most BUDGET files, the newest first (by the time they entered failed/), and says
when it stopped there.
"""

from __future__ import annotations

import heapq
import json
import os
from dataclasses import dataclass, field
from typing import Any

from spool.fsio import UnreadableFile, list_names, read_regular
from spool.layout import ERROR_SUFFIX, QueueDirs, marked_cancelled

BUDGET = 5_000
READ_LIMIT = 1024 * 1024


@dataclass
class Group:
    task: str
    error_type: str
    count: int = 0
    message: str = ""  # the newest one
    newest_at: float = 0.0
    ids: list[str] = field(default_factory=list)

    @property
    def retryable(self) -> bool:
        return self.error_type != "Rejected"


@dataclass(frozen=True)
class Failures:
    groups: list[Group]  # the biggest first
    read: int
    cut: bool  # more failed files than BUDGET: the counts are of the newest BUDGET


def group_failures(dirs: QueueDirs, budget: int = BUDGET) -> Failures:
    """The failed tasks of `dirs` by (task, error type), the biggest group first."""
    stamped = []
    names = list_names(dirs.failed)
    # RACE: a worker writes a cancelled task's file, then its marker; a listing between the two
    # shows it as a failure for one refresh, as the queue's counts do (spool.counts)
    cancelled = marked_cancelled(names)
    for name in names:
        if name.startswith(".") or name.endswith(ERROR_SUFFIX) or not name.endswith(".json"):
            continue
        if name in cancelled:
            continue
        try:
            stamped.append((os.lstat(dirs.failed / name).st_mtime, name))
        except FileNotFoundError:  # RACE: retried or purged since the listing
            continue
    newest = heapq.nlargest(budget, stamped)
    groups: dict[tuple[str, str], Group] = {}
    for at, name in newest:
        task_id, task, error_type, message = describe(dirs, name)
        group = groups.setdefault((task, error_type), Group(task, error_type))
        group.count += 1
        group.ids.append(task_id)
        if at > group.newest_at:
            group.newest_at, group.message = at, message
    ordered = sorted(groups.values(), key=lambda g: (-g.count, -g.newest_at))
    return Failures(ordered, len(newest), len(stamped) > budget)


def describe(dirs: QueueDirs, name: str) -> tuple[str, str, str, str]:
    """(id, task name, error type, message) of a file in failed/."""
    stem = name.removesuffix(".json")
    note = dirs.failed / f"{stem}{ERROR_SUFFIX}"
    task = read_json(dirs.failed / name)
    if os.path.lexists(note):
        reason = str(read_json(note).get("reason") or "")
        return str(task.get("id") or stem), str(task.get("task") or "?"), "Rejected", reason
    error = task.get("error") if isinstance(task.get("error"), dict) else {}
    assert isinstance(error, dict)
    message = str(error.get("message") or "").splitlines()
    return (
        str(task.get("id") or stem),
        str(task.get("task") or "?"),
        str(error.get("type") or "?"),
        message[0][:200] if message else "",
    )


def read_json(path: Any) -> dict[str, Any]:
    try:
        data = json.loads(read_regular(path, READ_LIMIT)[0])
    except (OSError, ValueError, UnreadableFile):
        return {}
    return data if isinstance(data, dict) else {}
