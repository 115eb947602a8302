"""Find a task by id, in any queue and any state, and read its file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spool.envelope import id_of_name, is_valid_id
from spool.fsio import UnreadableFile, list_names, read_regular
from spool.layout import (
    ERROR_SUFFIX,
    QueueDirs,
    existing_queues,
    split_delayed,
    split_processing,
)

PENDING_STATES = ("incoming", "delayed", "processing")
READ_LIMIT = 64 * 1024 * 1024
LOOKS = 3  # passes over the directories before a task is called unknown


@dataclass(frozen=True)
class Found:
    """Where a task is: its queue, its state, its file, and the rejection note if any."""

    queue: str
    state: str
    path: Path
    note: Path | None = None


def incoming_name(state: str, entry: str) -> str | None:
    if state == "incoming":
        return entry
    if state == "delayed":
        delayed = split_delayed(entry)
        return delayed[1] if delayed else None
    # a dot in front: the claim of a task whose outcome is being written (still processing)
    claimed = split_processing(entry.removeprefix("."))
    return claimed[0] if claimed else None


def finished(dirs: QueueDirs, task_id: str) -> Found | None:
    for state in ("done", "failed"):
        path = dirs.state(state) / f"{task_id}.json"
        if path.exists() or path.is_symlink():
            note = dirs.failed / f"{task_id}{ERROR_SUFFIX}"
            return Found(
                dirs.name, state, path, note if state == "failed" and note.exists() else None
            )
    return None


def locate(root: Path, task_id: str, queues: list[str] | None = None) -> Found | None:
    """Where the task with this id is now, or None (also for a string that is no valid id).

    A task moves by renames, some of them backwards in the order the directories are listed
    (a retry to delayed/, a promotion or a put-back to incoming/), so one pass can miss a live
    task: it is only called unknown after LOOKS passes found it nowhere.
    """
    if not is_valid_id(task_id):
        return None
    names = queues if queues is not None else existing_queues(root)
    for _ in range(LOOKS):
        found = look_once(root, task_id, names)
        if found is not None:
            return found
    return None


def locate_many(root: Path, task_ids: Iterable[str]) -> dict[str, Found]:
    """Where each of these tasks is now (ids found nowhere are left out), with one listing of
    each directory per pass instead of one per id; LOOKS passes, as `locate`."""
    wanted = {task_id for task_id in task_ids if is_valid_id(task_id)}
    found: dict[str, Found] = {}
    queues = existing_queues(root)
    for _ in range(LOOKS):
        missing = wanted - found.keys()
        if not missing:
            break
        for queue in queues:
            dirs = QueueDirs(root, queue)
            for state in PENDING_STATES:
                for entry in list_names(dirs.state(state)):
                    name = incoming_name(state, entry)
                    if name is not None and (task_id := id_of_name(name)) in missing:
                        found[task_id] = Found(queue, state, dirs.state(state) / entry)
            for task_id in missing - found.keys():  # RACE: also those that finished meanwhile
                if done := finished(dirs, task_id):
                    found[task_id] = done
    return found


def look_once(root: Path, task_id: str, names: list[str]) -> Found | None:
    for queue in names:
        dirs = QueueDirs(root, queue)
        found = finished(dirs, task_id)
        if found:
            return found
        for state in PENDING_STATES:
            for entry in list_names(dirs.state(state)):
                name = incoming_name(state, entry)
                if name is not None and id_of_name(name) == task_id:
                    return Found(queue, state, dirs.state(state) / entry)
        found = finished(dirs, task_id)  # RACE: it may have finished while we listed
        if found:
            return found
    return None


def read_found(found: Found) -> dict[str, Any]:
    """The task file as a dict plus `queue` and `state` (and `rejected` for a rejected file)."""
    info: dict[str, Any] = {"queue": found.queue, "state": found.state}
    try:
        data = json.loads(read_regular(found.path, READ_LIMIT)[0])
    except UnreadableFile as exc:
        data = {"unreadable": str(exc)}
    except (OSError, ValueError) as exc:
        data = {"unreadable": str(exc)}
    if not isinstance(data, dict):
        data = {"content": data}
    if found.note is not None:
        try:
            info["rejected"] = json.loads(found.note.read_bytes())
        except (OSError, ValueError):
            info["rejected"] = {"reason": "unknown (note unreadable)"}
    return {**data, **info}
