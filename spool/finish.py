"""Outcome -> done/, delayed/ (a retry after backoff, or at once after a lost attempt) or
failed/; a dead worker's task -> incoming/ or failed/; and rejections. Each then concludes
(see conclude: its event, its counter, its unique key). What an attempt makes of its task is
decided apart, with nothing written (see decision); this module writes it.

Every move out of processing/ writes the task's new content to tmp/ and renames it into its
destination; the claim is then hidden (renamed to a dot-name in processing/, so it no longer
counts as running) and unlinked once the destination is durable (the worker batches that: see
Committer). A crash in between leaves both files; recovery sees the destination and drops the
claim instead of running the task again, or, if a power loss tore the outcome, runs it again.

A rejected file (not a runnable task) is moved to failed/ as it is, with <stem>.error.json
beside it saying why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from spool import envelope
from spool.claim import Claim
from spool.conclude import Ending, Rejection, conclude, is_cancelled, keep_rejected, mark_cancelled
from spool.decision import RetryPolicy, after_attempt, lose
from spool.envelope import TaskDict
from spool.errors import error_dict
from spool.events import Outbox, read_json
from spool.execute import Outcome
from spool.faults import Complaint
from spool.fsio import list_names, sync_filesystem, write_atomic
from spool.layout import CANCEL_FILE, QueueDirs, delayed_name
from spool.stats import WorkerStats
from spool.workflows.ends import on_end

log = logging.getLogger(__name__)


def destination(dirs: QueueDirs, state: str, final: TaskDict, name: str) -> Path:
    if state in ("done", "failed", "cancelled"):
        return dirs.state("failed" if state == "cancelled" else state) / f"{final['id']}.json"
    due = float(final["retry_at"])
    return dirs.delayed / delayed_name(int(due * 1_000_000), name)


@dataclass
class Verdict:
    """What an attempt makes of its task, decided once: its state, content and destination. If
    the disk refuses it, the worker keeps it and writes this same file later (the retry's due
    time, with its jitter, is not drawn again); `written`/`concluded` mark the steps done."""

    state: str  # done, retry, lost or failed
    content: TaskDict
    dest: Path
    written: bool = False  # the task file is in its destination
    concluded: bool = False  # its event, counter and unique key are done (see conclude)


def finish(
    taken: Claim,
    task: TaskDict,
    outcome: Outcome,
    policy: RetryPolicy,
    outbox: Outbox | None = None,
    counts: WorkerStats | None = None,
) -> str:
    """Move an attempted task to its next state; return it: done, retry, lost or failed.

    With an outbox, the outcome's event is written after the outcome (both unsynced: the
    Committer syncs them before the claim goes).
    """
    verdict = verdict_of(taken, task, outcome, policy)
    write_verdict(taken, outcome, verdict, outbox, counts)
    return verdict.state


def verdict_of(taken: Claim, task: TaskDict, outcome: Outcome, policy: RetryPolicy) -> Verdict:
    """Decide an attempted task's next state and content (nothing is written)."""
    state, final = after_attempt(task, outcome, policy, taken.worker_id)
    return Verdict(state, final, destination(taken.dirs, state, final, taken.name))


def write_verdict(
    taken: Claim,
    outcome: Outcome,
    verdict: Verdict,
    outbox: Outbox | None,
    counts: WorkerStats | None,
) -> None:
    """Write the task file, then conclude. Raises: OSError (a full or failing disk); called
    again, it goes on from the step that failed."""
    dirs = taken.dirs
    if not verdict.written:
        write_atomic(envelope.dump(verdict.content), dirs.tmp, verdict.dest, durable=False)
        verdict.written = True  # (never twice: a retry in delayed/ may have been promoted since)
    if verdict.state == "cancelled":  # (the marker last: `spool cancel` waits for it)
        (dirs.beside(str(verdict.content["id"])) / CANCEL_FILE).unlink(missing_ok=True)
        mark_cancelled(dirs, verdict.content)  # (again after a crash: it checks)
    if not verdict.concluded:
        ending = Ending(verdict.state, outcome.finished_at, outcome.started_at, outcome.duration)
        conclude(dirs, verdict.content, ending, outbox, counts)
        verdict.concluded = True


def reject(
    taken: Claim, reason: str, worker_id: str, now: float, counts: WorkerStats | None = None
) -> Path:
    """Move a file that is not a runnable task to failed/ unchanged (rejected at `now`), with
    the reason beside it (see conclude.keep_rejected). Raises: OSError.

    It is stored as <id>.json, the id its name stands for (so `spool show ID` finds it).
    """
    try:
        mtime = os.lstat(taken.path).st_mtime
    except OSError:
        mtime = now
    rejection = Rejection(taken.name, reason, worker_id, now)
    name = envelope.id_of_name(taken.name, mtime) + ".json"

    def move(dest: Path) -> None:
        os.rename(taken.path, dest)  # the file itself, even a symlink or a directory: never read

    return keep_rejected(taken.dirs, rejection, name, move, counts)


@dataclass(frozen=True)
class Written:
    """An outcome already written for a claimed task: its status (done, failed, cancelled or
    retry) and content (None for a retry in delayed/ that cannot be read)."""

    status: str
    content: TaskDict | None


def written_outcome(dirs: QueueDirs, name: str, task: TaskDict) -> Written | None:
    """The outcome this claim's attempt (or a cancel) already wrote to done/, failed/ or
    delayed/, or None: the one answer to "is this outcome already written".

    Found after a worker died between writing the outcome and dropping its claim.
    """
    task_id = task.get("id")
    for status in ("done", "failed"):
        other = read_json(dirs.state(status) / f"{task_id}.json")
        if other is None or other.get("enqueued_at") != task.get("enqueued_at"):
            continue  # absent, torn by a power loss (run the task again), or another task's
        if is_cancelled(other):  # a cancel that died before it dropped its claim
            return Written("cancelled", other)
        if int(other.get("attempts", 0)) > int(task.get("attempts", 0)):
            return Written(status, other)
        return None  # an earlier attempt's outcome: this one wrote nothing, run the task again
    for entry in list_names(dirs.delayed):
        if entry.endswith("@" + name):
            return Written("retry", read_json(dirs.delayed / entry))
    return None


def recover(
    taken: Claim,
    task: TaskDict | None,
    dead_worker: str,
    policy: RetryPolicy | None,
    now: float,
    outbox: Outbox | None = None,
    counts: WorkerStats | None = None,
) -> str:
    """Send back a task whose worker died while it ran (the loss seen at `now`): incoming/
    (attempts + 1, lost + 1) or, when lost too often (see RetryPolicy.lost_too_often), failed/.

    `task` is None when the file cannot be read as a task: it goes back unchanged and the
    next claim rejects it with the reason.
    """
    dirs = taken.dirs
    written = written_outcome(dirs, taken.name, task) if task is not None else None
    if written is not None:
        if outbox is not None and written.content is not None:  # the worker may have died
            outbox.reemit(dirs.name, written.status, written.content)  # before the event
        if written.status == "cancelled" and written.content is not None:
            mark_cancelled(dirs, written.content)
        # CRASH: the worker may have died before the end's follow-ups: send what is missing
        on_end(dirs.root, written.content, written.status, durable=True)
        taken.path.unlink(missing_ok=True)
        return "finished"
    if task is None or policy is None:
        os.rename(taken.path, dirs.incoming / taken.name)
        return "incoming"
    message = f"worker {dead_worker} died while the attempt ran"
    lost = Outcome(False, now, now, error=error_dict("WorkerLost", message), lost=True)
    state, updated = lose(task, dead_worker, lost, policy)
    if state == "failed":
        write_atomic(envelope.dump(updated), dirs.tmp, dirs.failed / f"{task['id']}.json")
        ending = Ending("failed", now, now)
        conclude(dirs, updated, ending, outbox, counts, durable=True, check=True)
    else:
        write_atomic(envelope.dump(updated), dirs.tmp, dirs.incoming / taken.name)
        told = {**updated, "error": lost.error, "worker": dead_worker}  # what the event says
        conclude(dirs, told, Ending("lost", now, now), outbox, counts, durable=True)
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
        complaint = Complaint()
        while not self.stopping.is_set():
            self.has_work.wait()
            self.stopping.wait(self.max_delay_seconds)  # let a batch gather
            try:
                self.flush()
            except OSError as exc:  # a full or failing disk must not end the thread
                if complaint.due(time.time()):
                    log.error("cannot commit finished tasks (trying again): %s", exc)
                self.stopping.wait(1.0)
                continue
            if complaint.clear():
                log.info("finished tasks are committed again")

    def flush(self) -> None:
        """Sync, then drop the batch's claims. Raises: OSError (the rest of the batch is kept
        for the next flush)."""
        with self.lock:
            batch, self.pending = self.pending, []
            self.has_work.clear()
        if not batch:
            return
        try:
            sync_filesystem(self.root)  # CRASH: outcomes durable; the claims may remain
            while batch:
                batch[-1].unlink(missing_ok=True)
                batch.pop()
        except BaseException:
            with self.lock:
                self.pending[:0] = batch
                self.has_work.set()
            raise

    def close(self) -> None:
        """Commit what is pending and stop the thread; a disk that refuses is logged (the
        outcomes are written: recovery drops the claims left behind)."""
        self.stopping.set()
        self.has_work.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            self.thread = None
        try:
            self.flush()
        except OSError as exc:
            log.error("cannot commit finished tasks before stopping: %s", exc)
