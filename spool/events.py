"""The outbox: one event file per task outcome, written as part of finishing the task.

    <root>/.events/<finished µs>_<queue>_<id>_<attempt>_<status>.json   waiting for delivery
    <root>/.events/.sent/<the same name>       delivered to every sink (a tombstone, pruned)
    <root>/.events/.partial/<the same name>    sinks that accepted it so far (partial delivery)

An event's name, and its `event_id` (the name's stem), follow from the outcome alone (queue, id,
attempt, status and the attempt's finish time), so writing it twice writes the same file. A
worker's committer writes it (without a sync) once the outcome is durable and published, and
drops the claim only after its next sync covered the event too (see spool.commit). A worker
that dies in between leaves the claim: recovery sees the outcome, writes the event again from
the outcome file (durably) unless it is waiting in .events/ or already delivered (.sent/), and
only then drops the claim. So every outcome has exactly one event file, none is lost, and none
is delivered before its outcome is durable.

The directory starts with a dot, so it is never taken for a queue. Workers write events only
when the config's [notify] asks for them (a sink, or `events = true`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from spool.envelope import JSON, TaskDict
from spool.fsio import write_atomic
from spool.layout import ensure_dir

if TYPE_CHECKING:
    from spool.config import Settings

STATUSES = ("done", "failed", "retry", "cancelled")


def events_dir(root: Path) -> Path:
    return root / ".events"


def sent_dir(root: Path) -> Path:
    return events_dir(root) / ".sent"


def partial_dir(root: Path) -> Path:
    return events_dir(root) / ".partial"


def is_event_name(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


def event_name(queue: str, task_id: str, attempt: int, status: str, finished_at: float) -> str:
    """Sortable by finish time (so a task's events sort in order), unique per outcome."""
    return f"{int(finished_at * 1_000_000):016d}_{queue}_{task_id}_{attempt}_{status}.json"


def build_event(
    queue: str, task: TaskDict, status: str, started_at: float | None, finished_at: float
) -> dict[str, JSON]:
    """The event of one outcome; `task` is the task's content after the attempt."""
    attempt = int(task.get("attempts", 0))
    name = event_name(queue, str(task["id"]), attempt, status, finished_at)
    event: dict[str, JSON] = {
        "event_id": name.removesuffix(".json"),
        "id": task["id"],
        "task": task.get("task"),
        "queue": queue,
        "status": status,
        "attempts": attempt,
        "enqueued_at": task.get("enqueued_at"),
        "started_at": started_at,
        "finished_at": finished_at,
        "worker": task.get("worker"),
    }
    if status == "done":
        event["result"] = task.get("result")
    else:
        event["error"] = task.get("error") or last_error(task)
        decision = last_entry(task).get("decision")
        if decision is not None:  # what was decided, and why (see decision.decide)
            event["decision"] = decision
    if status == "retry":
        event["retry_at"] = task.get("retry_at")
    return event


def last_error(task: TaskDict) -> JSON:
    return last_entry(task).get("error")


def last_entry(task: TaskDict) -> dict[str, JSON]:
    """The task's last history entry ({} when it has none)."""
    history = task.get("history") or [{}]
    last = history[-1]
    return last if isinstance(last, dict) else {}


class Outbox:
    """Writes the events of outcomes into <root>/.events/."""

    def __init__(self, root: Path, on_retry: bool = False) -> None:
        self.root, self.on_retry = root, on_retry
        self.dir = events_dir(root)
        self.ready = False

    def wants(self, status: str) -> bool:
        return status != "retry" or self.on_retry

    def emit(
        self,
        queue: str,
        task: TaskDict,
        status: str,
        started_at: float | None,
        finished_at: float,
        *,
        durable: bool = False,
        check: bool = False,
    ) -> bool:
        """Write the outcome's event; with `check`, not if it exists or was delivered.

        Returns whether it was written.
        """
        if not self.wants(status):
            return False
        if not self.ready:
            ensure_dir(self.dir)
            self.ready = True
        event = build_event(queue, task, status, started_at, finished_at)
        name = f"{event['event_id']}.json"
        # RACE: look in .events/ first, then .sent/: the notifier moves an event from the one to
        # the other, so in this order a delivered event is seen in one of them
        if check and any(os.path.exists(d / name) for d in (self.dir, sent_dir(self.root))):
            return False
        data = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
        write_atomic(data, self.dir, self.dir / name, durable=durable)
        return True

    def reemit(self, queue: str, status: str, outcome: TaskDict) -> bool:
        """Write (durably) the event of an outcome already written (see finish.written_outcome),
        unless it exists or was delivered; True if written. For recovery after a worker died
        between the outcome and its event."""
        history = outcome.get("history") or [{}]
        last = history[-1] if isinstance(history[-1], dict) else {}
        finished = outcome.get("finished_at", last.get("finished_at"))
        started = outcome.get("started_at", last.get("started_at"))
        if not isinstance(finished, int | float):
            return False
        return self.emit(queue, outcome, status, started, float(finished), durable=True, check=True)


def outbox_for(settings: Settings) -> Outbox | None:
    """The outbox of a process that ends tasks, when the config's [notify] asks for events."""
    notify = settings.notify
    return Outbox(settings.root, notify.on_retry) if notify.enabled else None


def read_json(path: Path) -> TaskDict | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
