"""Outcome -> done/, delayed/ (a retry after backoff, or at once after a lost attempt) or
failed/; a dead worker's task -> incoming/ or failed/; and rejections. Each then concludes
(see conclude: its event, its counter, its unique key).

A lost attempt (the worker or the handler process died) is not a failure of the task: it counts
in `attempts` and in `lost`, against `max_lost` (not `max_retries`); at the `max_lost`-th loss,
or at the first for an `at_most_once` task, the task goes to failed/ as WorkerLost.

Every move out of processing/ writes the task's new content to tmp/ and renames it into its
destination; the claim is then hidden (renamed to a dot-name in processing/, so it no longer
counts as running) and unlinked once the destination is durable (the worker batches that: see
Committer). A crash in between leaves both files; recovery sees the destination and drops the
claim instead of running the task again, or, if a power loss tore the outcome, runs it again.

A failed attempt is decided once, by `decide`: what the handler asked for (spool.Retry,
spool.Fail, see spool.context), the task's retry_on / no_retry_on, and the retries left make a
Decision (retry, release, or fail) whose action and reason go into the attempt's history entry
and so into the completion event. A cancel seen while the attempt ran ends it as cancelled.

A rejected file (not a runnable task) is moved to failed/ as it is, with <stem>.error.json
beside it saying why.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from spool import envelope
from spool.claim import Claim
from spool.conclude import Ending, Rejection, conclude, is_cancelled, keep_rejected, mark_cancelled
from spool.context import MAX_RELEASES
from spool.envelope import JSON, TaskDict
from spool.errors import error_dict
from spool.events import Outbox, read_json
from spool.execute import Outcome
from spool.faults import Complaint
from spool.fsio import list_names, sync_filesystem, write_atomic
from spool.layout import CANCEL_FILE, QueueDirs, delayed_name
from spool.stats import WorkerStats
from spool.workflow import on_end

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed attempt is tried again, and how often a lost one.

    A lost attempt (its worker or handler process died) counts in `attempts` and in `lost`,
    never against `max_retries`: the retries left are computed from the failed attempts only.
    """

    max_retries: int
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 3600.0
    jitter: bool = True
    max_lost: int = 3
    at_most_once: bool = False
    retry_on: tuple[str, ...] = ()  # exception type names: only these are retried (empty: all)
    no_retry_on: tuple[str, ...] = ()  # exception type names never retried

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.backoff_max_seconds, self.backoff_seconds * 2.0 ** min(attempt - 1, 60))
        if self.jitter:
            base *= float((rng or random).uniform(1.0, 1.25))
        return min(base, self.backoff_max_seconds)

    def exhausted(self, attempts: int, lost: int = 0) -> bool:
        """Whether `attempts`, `lost` of them lost, used up the retries (failed ones spend them)."""
        return attempts - lost > self.max_retries

    def lost_too_often(self, lost: int) -> bool:
        """Whether a task whose `lost`-th attempt was just lost must not run again."""
        return self.at_most_once or lost >= self.max_lost

    def refusal(self, kinds: tuple[str, ...]) -> str | None:
        """Why an error of these types (its type first, then its bases) is not retried, or None."""
        if not kinds:
            return None
        for name in self.no_retry_on:
            if any(names_type(name, kind) for kind in kinds):
                return f"{kinds[0]} is not retried (no_retry_on {name})"
        if self.retry_on and not any(
            names_type(name, kind) for name in self.retry_on for kind in kinds
        ):
            return f"{kinds[0]} is not retried (retry_on: {', '.join(self.retry_on)})"
        return None


def names_type(name: str, kind: str) -> bool:
    """Whether `name` (as a task option or a task file gives it) names the type `kind`
    (`module.Name`): in full, or by its last part (a file may say `MailboxFull`)."""
    return name == kind or kind.rsplit(".", 1)[-1] == name


@dataclass(frozen=True)
class Decision:
    """What a failed attempt makes of its task: "retry" (in `after` seconds), "release" (a
    retry that spends none, see spool.context.Retry), "fail" (for good) or "cancel"."""

    action: str
    reason: str
    after: float | None = None

    def to_json(self) -> dict[str, JSON]:
        entry: dict[str, JSON] = {"action": self.action, "reason": self.reason}
        if self.after is not None:
            entry["after"] = round(self.after, 6)
        return entry


def decide(task: TaskDict, outcome: Outcome, policy: RetryPolicy) -> Decision:
    """The one decision on a failed attempt (not lost, not cancelled) of `task` (as before it)."""
    attempt = int(task.get("attempts", 0)) + 1
    asked = outcome.asked or {}
    reason = str(asked.get("reason") or "")
    if asked.get("action") == "fail":
        return Decision("fail", f"the handler raised Fail: {reason}")
    kinds = outcome.kinds or (str(outcome.error.get("type", "")),)
    refused = None if asked.get("action") == "retry" else policy.refusal(kinds)
    if refused is not None:
        return Decision("fail", refused)
    after = asked.get("after")
    lost, released = int(task.get("lost", 0)), int(task.get("released", 0))
    if asked.get("action") == "retry" and asked.get("count") is False and released < MAX_RELEASES:
        wait = float(after) if after is not None else policy.delay(1)
        return Decision("release", reason or "the handler raised Retry(count=False)", wait)
    if policy.exhausted(attempt, lost + released):
        return Decision("fail", f"no retries left (max_retries {policy.max_retries})")
    spent = attempt - lost - released
    if asked.get("action") == "retry":
        wait = float(after) if after is not None else policy.delay(spent)
        return Decision("retry", reason or "the handler raised Retry", wait)
    return Decision("retry", f"backoff after failed attempt {spent}", policy.delay(spent))


def history_entry(
    attempt: int, worker: str, outcome: Outcome, decision: Decision | None = None
) -> dict[str, JSON]:
    entry: dict[str, JSON] = {
        "attempt": attempt,
        "worker": worker,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
        "error": outcome.error,
    }
    if outcome.lost:
        entry["lost"] = True
    if decision is not None:
        entry["decision"] = decision.to_json()
    return entry


def lose(task: TaskDict, worker: str, lost: Outcome, policy: RetryPolicy) -> tuple[str, TaskDict]:
    """The task after an attempt lost with its worker or handler process: ("lost", content) to
    run it again, or ("failed", content) after at_most_once or its `max_lost`-th loss.

    `lost.finished_at` is the moment the loss was seen (the decision's `now`).
    """
    attempt = int(task.get("attempts", 0)) + 1
    times_lost = int(task.get("lost", 0)) + 1
    updated: TaskDict = dict(task)
    updated.update(attempts=attempt, lost=times_lost)
    updated["history"] = [*task.get("history", []), history_entry(attempt, worker, lost)]
    if not policy.lost_too_often(times_lost):
        return "lost", updated
    if policy.at_most_once:
        why = "at_most_once: a lost attempt is not run again"
    else:
        why = f"{times_lost} attempts lost (max_lost {policy.max_lost})"
    error = {**lost.error, "message": f"{lost.error.get('message', '')}; {why}"}
    updated.update(error=error, finished_at=lost.finished_at, worker=worker)
    return "failed", updated


def after_attempt(
    task: TaskDict, outcome: Outcome, policy: RetryPolicy, worker: str
) -> tuple[str, TaskDict]:
    """What an attempt makes of the task: (state, content); state done, retry, lost, failed or
    cancelled (a cancel seen while it ran).

    A retry or a lost attempt carries `retry_at`: a lost one is due at once.
    """
    if outcome.lost:
        state, after_loss = lose(task, worker, outcome, policy)
        if state == "lost":
            after_loss["retry_at"] = outcome.finished_at
        else:
            after_loss["started_at"] = outcome.started_at
        return state, after_loss
    attempt = int(task.get("attempts", 0)) + 1
    final: TaskDict = dict(task)
    final.update(attempts=attempt, started_at=outcome.started_at, worker=worker)
    final["finished_at"] = outcome.finished_at
    if outcome.progress is not None:
        final["progress"] = outcome.progress
    if outcome.ok:
        final["result"] = outcome.result
        final.pop("error", None)
        return "done", final
    if outcome.cancelled:
        decision = Decision("cancel", "cancelled by an operator while it ran")
    else:
        decision = decide(task, outcome, policy)
    final["history"] = [*task.get("history", []), history_entry(attempt, worker, outcome, decision)]
    if decision.action in ("fail", "cancel"):
        final["error"] = outcome.error
        if decision.action == "cancel":
            final["cancelled_at"] = outcome.finished_at
            return "cancelled", final
        return "failed", final
    if decision.action == "release":
        final["released"] = int(task.get("released", 0)) + 1
    final["retry_at"] = outcome.finished_at + float(decision.after or 0.0)
    for key in ("finished_at", "started_at", "worker"):
        final.pop(key)
    return "retry", final


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
