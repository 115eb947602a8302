"""How a task ends: one function for every end, so that no end misses its event, its counter or
the release of its unique key.

Whoever ends a task first puts its file in place (a rename or an atomic write):

    done       the handler returned                            worker (finish.publish_verdict)
    failed     failed for good, or lost too often              worker, recovery (finish.recover)
    rejected   the file is no runnable task                    worker (finish.reject),
                                                               MQTT intake (keep_rejected)
    cancelled  an operator took it out before it started       manage.cancel

and then calls `conclude`, which does the rest the same way for each: the completion event (when
events are on; a rejected file is no task and has none), the counter (see stats), the
release of the unique key the task held, and what the end sets off (follow-ups, a batch's
progress: see workflows.ends). A task can also go round again instead of ending:
`retry` (a failed attempt, to delayed/ for its backoff) and `lost` (its worker or handler
process died: it runs again at once); these get their event and counter too, and keep the key.

A rejected file is kept in failed/ as it came, under its own name (or a free variant of it),
with <stem>.error.json beside it saying why; `keep_rejected` writes both, for whoever rejects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spool.envelope import JSON, TaskDict
from spool.events import Outbox
from spool.fsio import fsync_dir, write_atomic
from spool.layout import ERROR_SUFFIX, QueueDirs, cancelled_marker
from spool.stats import WorkerStats
from spool.unique import release_unique_key
from spool.workflows.ends import on_end

COUNTER = {
    "done": "done",
    "failed": "failed",
    "rejected": "rejected",
    "cancelled": "cancelled",
    "retry": "retried",
    "lost": "lost",
}
EVENT = {"done": "done", "failed": "failed", "cancelled": "cancelled", "retry": "retry"}
EVENT["lost"] = "retry"  # the task runs again, as after a failed attempt
AGAIN = frozenset({"retry", "lost"})  # not an end: the task keeps its unique key


@dataclass(frozen=True)
class Ending:
    """How the task's file came to rest: its state (a key of COUNTER) and the attempt's times."""

    state: str
    finished_at: float
    started_at: float | None = None
    duration: float | None = None  # of the attempt, for the duration histogram


def conclude(
    dirs: QueueDirs,
    task: TaskDict | None,
    ending: Ending,
    outbox: Outbox | None,
    counts: WorkerStats | None,
    *,
    durable: bool = False,
    check: bool = False,
) -> None:
    """Emit the event, count, and release the unique key of a task whose file is at rest.

    `task` is the task's content as it rests (None for a rejected file); `durable` and `check`
    are the Outbox's (a worker's outcome is synced with its batch; others sync at once).
    """
    # first: a disk that refuses a follow-up makes the caller call again (see publish_verdict),
    # and this step alone is idempotent (see workflows.ends); the event and the counter are not
    on_end(dirs.root, task, ending.state, durable=durable)  # its follow-ups, its batch
    status = EVENT.get(ending.state)
    if outbox is not None and task is not None and status is not None:
        # CRASH: an outcome without its event: recovery writes it again (see events)
        outbox.emit(
            dirs.name,
            task,
            status,
            ending.started_at,
            ending.finished_at,
            durable=durable,
            check=check,
        )
    if counts is not None:
        counts.record(dirs.name, COUNTER[ending.state], ending.duration, ending.finished_at)
    if task is not None and ending.state not in AGAIN and isinstance(task.get("unique_key"), str):
        release_unique_key(dirs, task["unique_key"], str(task["id"]))


def is_cancelled(outcome: TaskDict) -> bool:
    """Whether a task file in failed/ records a cancel (see manage.cancel)."""
    return outcome.get("cancelled_at") is not None


def mark_cancelled(dirs: QueueDirs, task: TaskDict) -> None:
    """Put the marker beside a cancelled task's file in failed/ (see layout), if not there."""
    marker = dirs.failed / cancelled_marker(f"{task['id']}.json")
    if os.path.lexists(marker):
        return
    error = task.get("error")
    reason = error.get("message") if isinstance(error, dict) else None
    data = json.dumps({"cancelled_at": task.get("cancelled_at"), "reason": reason}).encode()
    write_atomic(data, dirs.tmp, marker)


@dataclass(frozen=True)
class Rejection:
    """Why a file is no runnable task, as its note in failed/ says."""

    file: str  # its name as it came
    reason: str
    by: str  # who rejected it: a worker's id, or "mqtt-intake"
    rejected_at: float
    more: Mapping[str, JSON] = field(default_factory=dict)  # e.g. the MQTT topic


def keep_rejected(
    dirs: QueueDirs,
    rejection: Rejection,
    name: str,
    put: Callable[[Path], None],
    counts: WorkerStats | None,
) -> Path:
    """Keep a rejected file in failed/ as `name` (or a free variant, see free_name), with its
    note beside it, and conclude it; return where it is. `put(dest)` puts the file there
    (a rename of the claimed file, or a write of a message as it came). Raises: OSError."""
    dest = free_name(dirs.failed, name)
    put(dest)
    note: dict[str, JSON] = {
        "file": rejection.file,
        "stored_as": dest.name,
        "reason": rejection.reason,
        **rejection.more,
        "rejected_at": rejection.rejected_at,
        "worker": rejection.by,
    }
    write_atomic(json.dumps(note, indent=2).encode(), dirs.tmp, dirs.failed / note_name(dest.name))
    fsync_dir(dirs.failed)
    conclude(dirs, None, Ending("rejected", rejection.rejected_at), None, counts)
    return dest


def free_name(directory: Path, name: str) -> Path:
    """`name` in `directory`, or `<stem>.<n>.json` when that (or its note) is taken."""
    stem = name.removesuffix(".json")
    candidate, n = name, 1
    while any(os.path.lexists(directory / c) for c in (candidate, note_name(candidate))):
        n += 1
        candidate = f"{stem}.{n}.json"
    return directory / candidate


def note_name(stored_as: str) -> str:
    """The name of the rejection note beside the file stored as `stored_as`."""
    return stored_as.removesuffix(".json") + ERROR_SUFFIX
