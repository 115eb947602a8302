"""Outcome -> done/, delayed/ (a retry after backoff, or at once after a lost attempt) or
failed/; a dead worker's task -> incoming/ or failed/; and rejections. Each then concludes
(see conclude: its event, its counter, its unique key). What an attempt makes of its task is
decided apart, with nothing written (see decision); this module writes it.

A worker's outcome moves in two steps, after the recorder hid the claim from the count of
running tasks (see Claim.hide). `stage_verdict` writes the task's new content to tmp/, under a
name that says whose claim and which state it is (`staged_path`), without a sync. Once a
filesystem sync made it durable, `publish_verdict` renames it into its destination and
concludes. The committer (see spool.commit) does that for a group at a time, so nothing is
seen done before it is durable. A crash in between leaves the claim: recovery finds the
outcome staged or published (`written_outcome`), finishes what is missing and drops the claim
instead of running the task again; if a power loss tore the staged file, the task runs again.

A rejected file (not a runnable task) is moved to failed/ as it is, with <stem>.error.json
beside it saying why.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from spool import envelope
from spool.claim import Claim
from spool.conclude import (
    AGAIN,
    Ending,
    Rejection,
    conclude,
    is_cancelled,
    keep_rejected,
    mark_cancelled,
)
from spool.decision import RetryPolicy, after_attempt, lose
from spool.envelope import TaskDict
from spool.errors import error_dict
from spool.events import Outbox, read_json
from spool.execute import Outcome
from spool.fsio import list_names, move_durably, write_atomic, write_file
from spool.layout import CANCEL_FILE, QueueDirs, delayed_name, processing_name
from spool.stats import WorkerStats
from spool.workflows.ends import on_end

log = logging.getLogger(__name__)


def destination(dirs: QueueDirs, state: str, final: TaskDict, name: str) -> Path:
    if state in ("done", "failed", "cancelled"):
        return dirs.state("failed" if state == "cancelled" else state) / f"{final['id']}.json"
    due = float(final["retry_at"])
    return dirs.delayed / delayed_name(int(due * 1_000_000), name)


STAGED_STATES = ("done", "retry", "lost", "failed", "cancelled")  # (see decision)


@dataclass
class Verdict:
    """What an attempt makes of its task, decided once: its state, content and destination. If
    the disk refuses it, the worker keeps it and writes this same file later (the retry's due
    time, with its jitter, is not drawn again); the flags mark the steps done."""

    state: str  # one of STAGED_STATES
    content: TaskDict
    dest: Path
    staged: bool = False  # its file is in tmp/ (see staged_path)
    written: bool = False  # its file is in its destination
    concluded: bool = False  # its event, counter, unique key and follow-ups are done


def verdict_of(taken: Claim, task: TaskDict, outcome: Outcome, policy: RetryPolicy) -> Verdict:
    """Decide an attempted task's next state and content (nothing is written)."""
    state, final = after_attempt(task, outcome, policy, taken.worker_id)
    return Verdict(state, final, destination(taken.dirs, state, final, taken.name))


def staged_path(dirs: QueueDirs, name: str, worker_id: str, state: str) -> Path:
    """Where the outcome of `worker_id`'s claim of `name` waits for its sync: a dot-name in
    tmp/ that recovery finds from the claim alone."""
    return dirs.tmp / f".{processing_name(name, worker_id)}.{state}"


def stage_verdict(taken: Claim, verdict: Verdict) -> Path:
    """Write the outcome to tmp/ (no sync); return where. Raises: OSError (a full or failing
    disk: nothing is left; called again, it writes it again)."""
    path = staged_path(taken.dirs, taken.name, taken.worker_id, verdict.state)
    if not verdict.staged:
        write_file(path, envelope.dump(verdict.content), durable=False)
        verdict.staged = True
    return path


def publish_verdict(
    staged: Path,
    taken: Claim,
    outcome: Outcome,
    verdict: Verdict,
    outbox: Outbox | None,
    counts: WorkerStats | None,
) -> None:
    """Once the staged outcome is durable: rename it into place, then conclude (its event and
    follow-ups are written without a sync: the committer's next sync covers them before the
    claim goes). Raises: OSError; called again, it goes on from the step that failed."""
    dirs = taken.dirs
    if not verdict.written:
        os.rename(staged, verdict.dest)  # CRASH: before, recovery publishes it; after, sees it
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


def written_outcome(dirs: QueueDirs, name: str, task: TaskDict, worker_id: str) -> Written | None:
    """The outcome `worker_id`'s attempt (or a cancel) already wrote to done/, failed/ or
    delayed/, or staged in tmp/ (then published now, durably), or None: the one answer to "is
    this outcome already written".

    Found after a worker died between staging the outcome and dropping its claim.
    """
    staged = publish_staged(dirs, name, task, worker_id)
    if staged is not None:
        return staged
    for status in ("done", "failed"):
        other = read_json(dirs.state(status) / f"{task.get('id')}.json")
        if other is None or other.get("enqueued_at") != task.get("enqueued_at"):
            continue  # absent, torn by a power loss (run the task again), or another task's
        if is_cancelled(other):  # a cancel that died before it dropped its claim
            return Written("cancelled", other)
        if is_later_attempt(other, task):
            return Written(status, other)
        return None  # an earlier attempt's outcome: this one wrote nothing, run the task again
    for entry in list_names(dirs.delayed):
        if entry.endswith("@" + name):
            return Written("retry", read_json(dirs.delayed / entry))
    return None


def publish_staged(dirs: QueueDirs, name: str, task: TaskDict, worker_id: str) -> Written | None:
    """Publish (durably) the outcome a dead worker staged for this claim and did not publish; a
    staged file torn by a power loss, or of an earlier attempt, is removed (None: run again)."""
    for state in STAGED_STATES:
        path = staged_path(dirs, name, worker_id, state)
        content = read_json(path)
        if content is None or not is_later_attempt(content, task):
            path.unlink(missing_ok=True)
            continue
        move_durably(path, destination(dirs, state, content, name))
        return Written("retry" if state in AGAIN else state, content)
    return None


def is_later_attempt(outcome: TaskDict, task: TaskDict) -> bool:
    """Whether `outcome` is what an attempt made of `task` (same task, more attempts)."""
    same = outcome.get("enqueued_at") == task.get("enqueued_at")
    return same and int(outcome.get("attempts", 0)) > int(task.get("attempts", 0))


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
    written = written_outcome(dirs, taken.name, task, dead_worker) if task is not None else None
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
