"""Outcome -> done/, delayed/ (a retry after backoff) or failed/; and rejections.

Every move out of processing/ writes the task's new content to tmp/ and renames it into its
destination; the claim is then hidden (renamed to a dot-name in processing/, so it no longer
counts as running) and unlinked once the destination is durable (the worker batches that: see
Committer). A crash in between leaves both files; recovery sees the destination and drops the
claim instead of running the task again, or, if a power loss tore the outcome, runs it again.

A rejected file (not a runnable task) is moved to failed/ as it is, with <stem>.error.json
beside it saying why.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from spool import envelope
from spool.claim import Claim
from spool.envelope import JSON, TaskDict
from spool.events import Outbox
from spool.execute import Outcome
from spool.fsio import fsync_dir, list_names, sync_filesystem, write_atomic
from spool.layout import ERROR_SUFFIX, QueueDirs, delayed_name
from spool.producer import release_unique_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed attempt is tried again."""

    max_retries: int
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 3600.0
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.backoff_max_seconds, self.backoff_seconds * 2.0 ** min(attempt - 1, 60))
        if self.jitter:
            base *= float((rng or random).uniform(1.0, 1.25))
        return min(base, self.backoff_max_seconds)

    def exhausted(self, attempts: int) -> bool:
        return attempts > self.max_retries


def history_entry(attempt: int, worker: str, outcome: Outcome) -> dict[str, JSON]:
    return {
        "attempt": attempt,
        "worker": worker,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
        "error": outcome.error,
    }


def finish(
    taken: Claim,
    task: TaskDict,
    outcome: Outcome,
    policy: RetryPolicy,
    outbox: Outbox | None = None,
) -> str:
    """Move an attempted task to its next state; return it: done, retry or failed.

    With an outbox, the outcome's event is written after the outcome (both unsynced: the
    Committer syncs them before the claim goes).
    """
    dirs = taken.dirs
    attempt = int(task.get("attempts", 0)) + 1
    final: TaskDict = dict(task)
    final.update(attempts=attempt, started_at=outcome.started_at, worker=taken.worker_id)
    final["finished_at"] = outcome.finished_at
    if outcome.ok:
        final["result"] = outcome.result
        final.pop("error", None)
        state = "done"
        dest = dirs.done / f"{task['id']}.json"
    else:
        final["history"] = [
            *task.get("history", []),
            history_entry(attempt, taken.worker_id, outcome),
        ]
        if policy.exhausted(attempt):
            final["error"] = outcome.error
            state = "failed"
            dest = dirs.failed / f"{task['id']}.json"
        else:
            due = outcome.finished_at + policy.delay(attempt)
            final["retry_at"] = due
            for key in ("finished_at", "started_at", "worker"):
                final.pop(key)
            state = "retry"
            dest = dirs.delayed / delayed_name(int(due * 1_000_000), taken.name)
    write_atomic(envelope.dump(final), dirs.tmp, dest, durable=False)
    if outbox is not None:  # CRASH: outcome without event: recovery writes it (see events)
        outbox.emit(dirs.name, final, state, outcome.started_at, outcome.finished_at)
    if state != "retry" and "unique_key" in task:
        release_unique_key(dirs, task["unique_key"], str(task["id"]))
    return state


def reject(taken: Claim, reason: str, worker_id: str) -> Path:
    """Move a file that is not a runnable task to failed/ unchanged, with the reason beside it.

    It is stored as <id>.json, the id its name stands for (so `spool show ID` finds it).
    """
    dirs = taken.dirs
    try:
        mtime = os.lstat(taken.path).st_mtime
    except OSError:
        mtime = time.time()
    dest = free_name(dirs.failed, envelope.id_of_name(taken.name, mtime) + ".json")
    os.rename(taken.path, dest)  # the file itself, even a symlink or a directory: never read
    stem = stem_of(dest.name)
    sidecar = {
        "file": taken.name,
        "stored_as": dest.name,
        "reason": reason,
        "rejected_at": time.time(),
        "worker": worker_id,
    }
    write_atomic(
        json.dumps(sidecar, indent=2).encode(), dirs.tmp, dirs.failed / (stem + ERROR_SUFFIX)
    )
    fsync_dir(dirs.failed)
    return dest


def free_name(directory: Path, name: str) -> Path:
    """`name` in `directory`, or `<stem>.<n>.json` when that (or its sidecar) is taken."""
    stem = name.removesuffix(".json")
    candidate, n = name, 1
    while any(
        os.path.lexists(directory / c) for c in (candidate, stem_of(candidate) + ERROR_SUFFIX)
    ):
        n += 1
        candidate = f"{stem}.{n}.json"
    return directory / candidate


def stem_of(name: str) -> str:
    return name.removesuffix(".json")


def already_finished(dirs: QueueDirs, name: str, task: TaskDict) -> bool:
    """Whether a claimed task's outcome already reached done/, failed/ or delayed/.

    True after a worker died between writing the outcome and dropping its claim.
    """
    task_id = task.get("id")
    for path in (dirs.done / f"{task_id}.json", dirs.failed / f"{task_id}.json"):
        try:
            other = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # absent, or torn by a power loss: run the task again
        if isinstance(other, dict) and other.get("enqueued_at") == task.get("enqueued_at"):
            return int(other.get("attempts", 0)) > int(task.get("attempts", 0))
    return any(entry.endswith("@" + name) for entry in list_names(dirs.delayed))


def recover(
    taken: Claim,
    task: TaskDict | None,
    dead_worker: str,
    policy: RetryPolicy | None,
    outbox: Outbox | None = None,
) -> str:
    """Send back a task whose worker died while it ran: incoming/ (attempts + 1) or failed/.

    `task` is None when the file cannot be read as a task: it goes back unchanged and the
    next claim rejects it with the reason.
    """
    dirs = taken.dirs
    if task is not None and already_finished(dirs, taken.name, task):
        if outbox is not None:  # the worker may have died before writing the event
            outbox.reemit(dirs, taken.name, task)
        taken.path.unlink(missing_ok=True)
        return "finished"
    if task is None or policy is None:
        os.rename(taken.path, dirs.incoming / taken.name)
        return "incoming"
    now = time.time()
    message = f"worker {dead_worker} died while the attempt ran"
    lost = Outcome(
        False, now, now, error={"type": "WorkerLost", "message": message, "traceback": ""}
    )
    attempt = int(task.get("attempts", 0)) + 1
    updated: TaskDict = dict(task)
    updated["attempts"] = attempt
    updated["history"] = [*task.get("history", []), history_entry(attempt, dead_worker, lost)]
    if policy.exhausted(attempt):
        updated.update(error=lost.error, finished_at=now, worker=dead_worker)
        write_atomic(envelope.dump(updated), dirs.tmp, dirs.failed / f"{task['id']}.json")
        if outbox is not None:
            outbox.emit(dirs.name, updated, "failed", now, now, durable=True, check=True)
        if "unique_key" in task:
            release_unique_key(dirs, task["unique_key"], str(task["id"]))
        state = "failed"
    else:
        write_atomic(envelope.dump(updated), dirs.tmp, dirs.incoming / taken.name)
        if outbox is not None:  # the lost attempt counts as a failed one that is retried
            updated.update(error=lost.error, worker=dead_worker)
            outbox.emit(dirs.name, updated, "retry", now, now, durable=True)
        state = "incoming"
    taken.path.unlink(missing_ok=True)
    return state


class Committer:
    """Drops claims whose outcome is written, after one filesystem sync for the whole batch.

    Outcomes are written without a sync each; a background thread collects the claims of
    finished tasks for up to `max_delay_seconds`, syncs the filesystem once, and only then
    removes those claims from processing/. So a power loss never loses a task (at worst it
    runs again), and the worker never waits for a disk flush between two tasks.
    """

    def __init__(self, root: Path, max_delay_seconds: float = 0.05) -> None:
        self.root, self.max_delay_seconds = root, max_delay_seconds
        self.pending: list[Path] = []
        self.lock = threading.Lock()
        self.has_work = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="spool-committer", daemon=True)
        self.thread.start()

    def add(self, claim_path: Path) -> None:
        with self.lock:
            self.pending.append(claim_path)
            self.has_work.set()
        if self.thread is None:
            self.flush()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.has_work.wait()
            self.stopping.wait(self.max_delay_seconds)  # let a batch gather
            try:
                self.flush()
            except OSError as exc:  # a full or failing disk must not end the thread
                log.error("cannot commit finished tasks: %s", exc)
                self.stopping.wait(1.0)

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
            self.has_work.clear()
        if not batch:
            return
        sync_filesystem(self.root)  # CRASH: outcomes durable; the claims may remain
        for path in batch:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Commit what is pending and stop the thread."""
        self.stopping.set()
        self.has_work.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            self.thread = None
        self.flush()
