"""Operator actions on tasks at rest: retry failed ones, cancel pending ones (and ask the
worker of a running one to stop it), purge finished ones, pause and resume a queue. They work
on the directories, with every worker down too.

Each action that takes a task out of incoming/ or delayed/ first claims it with a rename (as a
worker does), so it never races a worker: whoever renames first owns the task.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spool import envelope, stats
from spool.claim import Claim, claim
from spool.conclude import Ending, conclude, is_cancelled, mark_cancelled
from spool.envelope import TaskDict
from spool.errors import SpoolError, TaskNotFound
from spool.events import Outbox
from spool.fsio import UnreadableFile, read_regular, write_atomic
from spool.layout import (
    CANCEL_FILE,
    ERROR_SUFFIX,
    QueueDirs,
    cancelled_marker,
    ensure_dir,
    existing_queues,
    is_cancelled_marker,
    marked_cancelled,
    split_delayed,
)
from spool.lookup import READ_LIMIT, Found, locate
from spool.producer import stamp
from spool.retention import is_older, remove
from spool.unique import take_unique_key

FINISHED_KEYS = (
    "result",
    "error",
    "finished_at",
    "started_at",
    "worker",
    "retry_at",
    "result_is_repr",
    "cancelled_at",
    "lost",
    "released",
    "progress",
)


class NotRetryable(SpoolError):
    """The task is not in failed/."""


class NotCancellable(SpoolError):
    """The task has finished, or its worker did not stop it in time."""


CANCEL_WAIT_SECONDS = 5.0  # for the worker of a running task to record it cancelled
CANCEL_POLL_SECONDS = 0.02


def read_task(path: Path) -> TaskDict:
    data, _ = read_regular(path, READ_LIMIT)
    task = json.loads(data)
    if not isinstance(task, dict):
        raise ValueError("not a JSON object")
    return task


# ---- retry -----------------------------------------------------------------------------


def retry(root: Path, task_id: str) -> str:
    """Move a failed task back to incoming/ with attempts reset (history kept); return its queue.

    A rejected file goes back unchanged under its original name, to be validated again. A
    cancelled task named here is revived too (the operator named it); `--all-failed` never
    names one (see failed_ids).
    Raises: TaskNotFound, NotRetryable.
    """
    found = locate(root, task_id)
    if found is None:
        raise TaskNotFound(task_id)
    if found.state != "failed":
        raise NotRetryable(f"task {task_id} is {found.state}, not failed")
    dirs = QueueDirs(root, found.queue)
    if found.note is not None:
        retry_rejected(dirs, found)
    else:
        retry_failed(dirs, found)
    removed = {(found.queue, "failed"): 1}
    marker = dirs.failed / cancelled_marker(found.path.name)
    if os.path.lexists(marker):  # CRASH: before this, a revived task still counts as cancelled
        marker.unlink(missing_ok=True)
        removed[(found.queue, "cancelled")] = 1
    stats.record_removed(root, removed)
    return found.queue


def retry_failed(dirs: QueueDirs, found: Found) -> None:
    task = read_task(found.path)
    for field in FINISHED_KEYS:
        task.pop(field, None)
    task["attempts"] = 0
    task["retried_at"] = now = time.time()
    task.pop("delay", None)
    task.pop("not_before", None)
    name = stamp(task, now)
    key = task.get("unique_key")
    if isinstance(key, str):  # pending again, so it holds its key again (released on failing)
        holder = take_unique_key(dirs, key, str(task["id"]), name)
        if holder is not None:
            raise NotRetryable(
                f"task {task['id']} is not retried: task {holder} holds its unique key {key!r}"
            )
    write_atomic(envelope.dump(task), dirs.tmp, dirs.incoming / name)
    found.path.unlink(missing_ok=True)


def retry_rejected(dirs: QueueDirs, found: Found) -> None:
    assert found.note is not None
    try:
        original = str(json.loads(found.note.read_bytes()).get("file") or found.path.name)
    except (OSError, ValueError):
        original = found.path.name
    if not original.endswith(".json") or "/" in original or original.startswith("."):
        original = found.path.name
    os.rename(found.path, dirs.incoming / original)
    found.note.unlink(missing_ok=True)


def failed_ids(root: Path, queue: str | None, task_name: str | None) -> Iterator[tuple[str, str]]:
    """(queue, id) of every failed task, optionally of one queue or one task name; cancelled
    tasks are not failed ones and are left out."""
    for name in [queue] if queue else existing_queues(root):
        dirs = QueueDirs(root, name)
        entries = sorted(os.listdir(dirs.failed)) if dirs.failed.is_dir() else []
        cancelled = marked_cancelled(entries)
        for entry in entries:
            if entry.startswith(".") or entry.endswith(ERROR_SUFFIX) or not entry.endswith(".json"):
                continue
            if entry in cancelled:
                continue
            if task_name is not None:
                try:
                    if read_task(dirs.failed / entry).get("task") != task_name:
                        continue
                except (OSError, ValueError, UnreadableFile):
                    continue
            yield name, entry.removesuffix(".json")


# ---- cancel ----------------------------------------------------------------------------


def cancel(
    root: Path,
    task_id: str,
    reason: str = "cancelled by an operator",
    outbox: Outbox | None = None,
    wait_seconds: float = CANCEL_WAIT_SECONDS,
) -> str:
    """Cancel a task that has not finished; return its queue once it is recorded cancelled.

    A pending task (incoming/ or delayed/) is taken out at once (see cancel_pending). For a
    running one, a cancel request is put beside it (see layout): its worker, on this host or
    another, stops the attempt within a second (see execute) and records it cancelled; this
    waits up to `wait_seconds` for that.
    Raises: TaskNotFound, NotCancellable (it finished, or its worker did not stop it in time).
    """
    deadline = time.monotonic() + wait_seconds
    dirs: QueueDirs | None = None  # set once a request is beside the running task
    while True:
        found = locate(root, task_id)
        if found is None:
            raise TaskNotFound(task_id)
        if found.state in ("incoming", "delayed"):  # (also: its attempt failed meanwhile)
            queue = cancel_pending(root, task_id, found, reason, outbox)
            if queue is not None:
                withdraw(dirs, task_id)
                return queue
        elif found.state == "processing" and dirs is None:
            dirs = QueueDirs(root, found.queue)
            ask_to_cancel(dirs, task_id, reason)
        elif found.state in ("done", "failed"):
            if dirs is None or not ended_by_cancel(found):
                withdraw(dirs, task_id)
                raise NotCancellable(
                    f"task {task_id} is {found.state}: only pending or running tasks can be "
                    "cancelled"
                )
            # RACE: its worker writes the file, then the marker (see finish.publish_verdict)
            if os.path.lexists(dirs.failed / cancelled_marker(found.path.name)):
                return found.queue
        if time.monotonic() >= deadline:
            raise NotCancellable(
                f"task {task_id} is running and its worker did not stop it within "
                f"{wait_seconds:g} s; it will when it sees the request"
            )
        time.sleep(CANCEL_POLL_SECONDS)


def ended_by_cancel(found: Found) -> bool:
    """Whether a finished task's file records a cancel (its worker stopped it for us)."""
    return found.state == "failed" and is_cancelled(read_task(found.path))


def ask_to_cancel(dirs: QueueDirs, task_id: str, reason: str) -> None:
    """Put the cancel request beside a running task (its worker looks for it, see execute)."""
    beside = dirs.beside(task_id)
    ensure_dir(beside)
    data = json.dumps({"reason": reason, "asked_at": time.time()}).encode()
    write_atomic(data, dirs.tmp, beside / CANCEL_FILE)


def withdraw(dirs: QueueDirs | None, task_id: str) -> None:
    """Take back a cancel request the task no longer needs (it ended otherwise)."""
    if dirs is not None:
        (dirs.beside(task_id) / CANCEL_FILE).unlink(missing_ok=True)


def cancel_pending(
    root: Path, task_id: str, found: Found, reason: str, outbox: Outbox | None
) -> str | None:
    """Take a pending task out and record it in failed/ as Cancelled, marked cancelled (not
    failed: see layout); it concludes like any end (event "cancelled", counter, unique key
    released). Return its queue; None if a worker claimed it first (it is running)."""
    dirs = QueueDirs(root, found.queue)
    taken = take_pending(dirs, found)
    if taken is None:
        return None
    try:
        task = read_task(taken.path)
    except (OSError, ValueError, UnreadableFile):
        task = {"task": None}
    now = time.time()
    task.setdefault("id", task_id)
    with contextlib.suppress(OSError):  # as recovery will see it (see finish.written_outcome)
        task.setdefault("enqueued_at", os.lstat(taken.path).st_mtime)
    task["error"] = {"type": "Cancelled", "message": reason, "traceback": ""}
    task["finished_at"] = now
    task["cancelled_at"] = now
    write_atomic(envelope.dump(task), dirs.tmp, dirs.failed / f"{task_id}.json")
    # CRASH: from here on the claim stays until the end of this function; recovery sees the
    # cancelled outcome, drops the claim and writes what is missing (marker, event)
    mark_cancelled(dirs, task)
    counts = stats.command_stats(root)
    conclude(dirs, task, Ending("cancelled", now), outbox, counts, durable=True)
    counts.flush(0.0, force=True)
    taken.path.unlink(missing_ok=True)
    return found.queue


def take_pending(dirs: QueueDirs, found: Found) -> Claim | None:
    """Claim a pending task as a worker would (delayed ones via their incoming name)."""
    worker_id = f"cancel-{os.getpid()}"
    if found.state == "incoming":
        return claim(dirs, found.path.name, worker_id)
    parts = split_delayed(found.path.name)
    if parts is None:
        return None
    taken = Claim(dirs, parts[1], worker_id)
    try:
        os.rename(found.path, taken.path)
    except FileNotFoundError:  # RACE: promoted or claimed meanwhile
        return None
    return taken


# ---- purge -----------------------------------------------------------------------------


@dataclass
class PurgeResult:
    matched: int = 0
    deleted: int = 0


def purge(
    root: Path,
    state: str,
    older_than_seconds: float | None,
    queue: str | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    now: float | None = None,
) -> PurgeResult:
    """Delete finished tasks (done or failed) older than the given age (by mtime)."""
    if state not in ("done", "failed"):
        raise SpoolError(f"purge works on done or failed, not {state!r}")
    now = time.time() if now is None else now
    result = PurgeResult()
    removed: dict[tuple[str, str], int] = {}
    cutoff = math.inf if older_than_seconds is None else now - older_than_seconds
    for name in [queue] if queue else existing_queues(root):
        directory = QueueDirs(root, name).state(state)
        try:
            entries = os.scandir(directory)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if not is_older(entry, cutoff):
                    continue
                if is_cancelled_marker(entry.name):  # it goes with its task (same mtime)
                    if not dry_run and remove(entry):
                        removed[(name, "cancelled")] = removed.get((name, "cancelled"), 0) + 1
                    continue
                result.matched += 1
                if not dry_run and remove(entry):
                    result.deleted += 1
                    if not entry.name.endswith(ERROR_SUFFIX):
                        removed[(name, state)] = removed.get((name, state), 0) + 1
                if progress is not None:
                    progress(1)
    if removed:
        stats.record_removed(root, removed)
    return result


# ---- pause -----------------------------------------------------------------------------


def pause(dirs: QueueDirs, reason: str = "") -> None:
    """Mark the queue paused: every worker stops claiming from it (until resumed)."""
    dirs.create()
    info = json.dumps({"paused_at": time.time(), "reason": reason}).encode()
    write_atomic(info, dirs.tmp, dirs.pause_marker)


def resume(dirs: QueueDirs) -> bool:
    """Remove the pause marker; return whether the queue was paused."""
    try:
        os.unlink(dirs.pause_marker)
        return True
    except FileNotFoundError:
        return False


def paused_info(dirs: QueueDirs) -> dict[str, Any] | None:
    try:
        info = json.loads(dirs.pause_marker.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
