"""`spool ls`: the tasks of one state, newest first for finished ones, in run order for waiting
ones, filtered by queue, task name and age, at most `limit` of them. A row of failed/ says
whether the task was cancelled (`cancelled`: true), which is no failure; a row of processing/
gives the attempt running and for how long (`attempt`, `claimed_at`, `running_seconds`).

Names are listed without a stat; ages come from the names where they carry a time (waiting
tasks, delayed due times) and from the file otherwise; files are read only for the rows shown.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spool.envelope import id_of_name
from spool.fsio import UnreadableFile, read_regular
from spool.inspect.beside import progress_of
from spool.layout import (
    CANONICAL_RE,
    ERROR_SUFFIX,
    STATES,
    QueueDirs,
    cancelled_marker,
    existing_queues,
    split_delayed,
    split_processing,
)
from spool.lookup import READ_LIMIT


@dataclass(frozen=True)
class Filters:
    queue: str | None = None
    task: str | None = None
    since_seconds: float | None = None  # at most this old
    older_than_seconds: float | None = None  # at least this old
    limit: int | None = 100


def entry_time(state: str, directory: Path, entry: str) -> float | None:
    """When the entry entered its state, as well as the name tells (else its mtime)."""
    name = entry
    if state == "delayed":
        parts = split_delayed(entry)
        name = parts[1] if parts else entry
    elif state == "processing":
        parts2 = split_processing(entry)
        name = parts2[0] if parts2 else entry
    match = CANONICAL_RE.fullmatch(name)
    if match and state in ("incoming", "delayed", "processing"):
        return int(match.group(2)) / 1_000_000
    try:
        return os.lstat(directory / entry).st_mtime
    except FileNotFoundError:
        return None


def row(
    queue: str, state: str, directory: Path, entry: str, at: float, now: float
) -> dict[str, Any]:
    """One task of the listing, read from its file (no-follow; unreadable files say so)."""
    path = directory / entry
    incoming_name = entry
    if state == "delayed":
        incoming_name = (split_delayed(entry) or (0, entry))[1]
    elif state == "processing":
        incoming_name = (split_processing(entry) or (entry, ""))[0]
    info: dict[str, Any] = {
        "queue": queue,
        "state": state,
        "id": id_of_name(incoming_name),
        "file": entry,
    }
    try:
        task = json.loads(read_regular(path, READ_LIMIT)[0])
    except (OSError, ValueError, UnreadableFile) as exc:
        task = {"unreadable": str(exc)}
    if not isinstance(task, dict):
        task = {"unreadable": "not a JSON object"}
    info["id"] = task.get("id", info["id"])
    info.update(
        task=task.get("task"),
        priority=task.get("priority", 0),
        attempts=task.get("attempts", 0),
        age_seconds=round(max(0.0, now - at), 3),
    )
    if state == "delayed":
        parts = split_delayed(entry)
        info["due_at"] = parts[0] / 1_000_000 if parts else None
    if state == "failed":
        error = task.get("error") or {}
        note = directory / f"{entry.removesuffix('.json')}{ERROR_SUFFIX}"
        if not error and note.exists():
            try:
                reason = json.loads(note.read_bytes()).get("reason", "")
            except (OSError, ValueError):
                reason = ""
            error = {"type": "Rejected", "message": reason}
        info["error_type"] = error.get("type") if isinstance(error, dict) else None
        info["error_message"] = error.get("message") if isinstance(error, dict) else None
        info["cancelled"] = os.path.lexists(directory / cancelled_marker(entry))
    if state == "done":
        info["finished_at"] = task.get("finished_at")
    if state == "processing":
        info.update(running(path, info["attempts"], now))
        info["progress"] = progress_of(QueueDirs(directory.parent.parent, queue), task)
    if "unreadable" in task:
        info["unreadable"] = task["unreadable"]
    return info


def running(path: Path, attempts: Any, now: float) -> dict[str, Any]:
    """A claim's attempt number and how long it has run: the claim's rename set the file's
    ctime (the file is not written while its handler runs; in shared mode a lease renewal
    touches it, so there the time counts from the last renewal)."""
    try:
        claimed_at: float | None = os.lstat(path).st_ctime
    except FileNotFoundError:  # RACE: it finished since the listing
        claimed_at = None
    return {
        "attempt": (attempts if isinstance(attempts, int) else 0) + 1,
        "claimed_at": claimed_at,
        "running_seconds": None if claimed_at is None else round(max(0.0, now - claimed_at), 3),
    }


def list_tasks(
    root: Path, state: str, filters: Filters, now: float | None = None
) -> list[dict[str, Any]]:
    """Rows of `spool ls`; waiting states in run order, finished ones newest first."""
    if state not in STATES:
        raise ValueError(state)
    now = time.time() if now is None else now
    rows: list[dict[str, Any]] = []
    for queue, directory, entry, at in candidates(root, state, filters, now):
        item = row(queue, state, directory, entry, at, now)
        if filters.task is not None and item["task"] != filters.task:
            continue
        rows.append(item)
        if filters.limit is not None and len(rows) >= filters.limit:
            break
    return rows


def candidates(
    root: Path, state: str, filters: Filters, now: float
) -> Iterator[tuple[str, Path, str, float]]:
    found: list[tuple[str, Path, str, float]] = []
    for queue in [filters.queue] if filters.queue else existing_queues(root):
        directory = QueueDirs(root, queue).state(state)
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.startswith(".") or entry.endswith(ERROR_SUFFIX):
                continue
            at = entry_time(state, directory, entry)
            if at is None:
                continue
            age = now - at
            if filters.since_seconds is not None and age > filters.since_seconds:
                continue
            if filters.older_than_seconds is not None and age < filters.older_than_seconds:
                continue
            found.append((queue, directory, entry, at))
    if state in ("incoming", "processing"):
        found.sort(key=lambda item: item[2])  # canonical names sort in run order
    elif state == "delayed":
        found.sort(key=lambda item: item[2])  # due time first
    else:
        found.sort(key=lambda item: item[3], reverse=True)
    yield from found
