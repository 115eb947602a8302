"""What a task is part of: the task that caused it (`parent`, or the batch whose callback it
is), its follow-ups (their ids are derived, see envelope.follow_up_id) and the batch it is a
member of, with each one's state. Shown by `spool show`, the HTTP API and the task page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spool.errors import BatchNotFound
from spool.lookup import locate
from spool.workflows import batches
from spool.workflows.followup import follow_up_ids


def links_of(root: Path, task: dict[str, Any]) -> dict[str, Any]:
    """The task's workflow links (empty when it has none)."""
    links: dict[str, Any] = {}
    if isinstance(task.get("parent"), str):
        links["parent"] = with_state(root, task["parent"])
    for kind, ids in follow_up_ids(task).items():
        links[kind] = [with_state(root, i) for i in ids]
    for field in ("batch", "batch_callback"):
        if isinstance(task.get(field), str):
            try:
                links[field] = batches.summary(root, task[field]).to_json()
            except BatchNotFound:
                links[field] = {"id": task[field], "unknown": True}
    return links


def with_state(root: Path, task_id: str) -> dict[str, Any]:
    """A linked task's id and state (None: not enqueued yet, or deleted)."""
    found = locate(root, task_id)
    return {"id": task_id, "state": found.state if found else None}
