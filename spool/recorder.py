"""Recording an attempt's outcome behind the next attempt, and keeping it in memory while the
disk refuses it.

The worker hands each ended attempt over (`defer`) and goes on to the next: the outcome is
decided and staged while the next handler runs (or before the worker waits or stops), then
handed to the committer, which makes it durable with its group and only then publishes it (see
spool.commit). Before it is staged the claim is hidden (the fence, see fence): a claim a
recoverer took meanwhile drops the outcome.

A full or failing disk (see spool.faults): an outcome the disk refuses waits in memory, its
claim held (in shared mode, its lease too), and is tried again with a growing pause; while any
waits the worker claims nothing new (outcomes_waiting), and its info shows it (see
workers.WorkerLock.show_waiting). Outcomes are written in the order their attempts ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

from spool.claim import Claim
from spool.commit import Committer, Staged
from spool.decision import RetryPolicy
from spool.envelope import TaskDict
from spool.execute import Outcome
from spool.faults import Backoff, Complaint, describe, is_disk_fault
from spool.finish import Verdict, stage_verdict, verdict_of
from spool.handover import HandOverList
from spool.lease import LeaseKeeper
from spool.workers import WorkerLock

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """An attempt that ended, waiting to be recorded (see Recorder.record_pending)."""

    taken: Claim  # hidden (committed) once the outcome is being written
    task: TaskDict
    outcome: Outcome
    policy: RetryPolicy
    fields: str
    verdict: Verdict | None = None  # decided at the first try to write it; kept if it fails


class Recorder:
    """Writes the outcomes of one worker's attempts, in order, and keeps those the disk refuses."""

    def __init__(
        self,
        committer: Committer,
        lock: WorkerLock,
        leases: LeaseKeeper | None,
        handed: HandOverList,
    ) -> None:
        self.committer, self.lock, self.leases = committer, lock, leases
        self.handed = handed  # what the worker handed over (see keep_unwritten)
        self.pending: Pending | None = None  # an attempt whose outcome is not recorded yet
        self.unwritten: list[Pending] = []  # outcomes the disk refused, tried again (in order)
        self.write_backoff = Backoff()
        self.write_again_at = 0.0  # (monotonic) the next try of the unwritten outcomes
        self.write_complaint = Complaint()
        self.shown_waiting = False  # (see show_waiting)

    def defer(self, pending: Pending) -> None:
        """Keep an ended attempt to record later (after recording the one before, if still
        pending: it is, when the handler process was found dead)."""
        self.record_pending()
        self.pending = pending

    def record_pending(self) -> None:
        """Record the last attempt's outcome, if not yet done (if the disk refuses it, it is
        kept: see keep_unwritten); publish the outcomes made durable meanwhile."""
        self.publish_durable()
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        self.record(pending)

    def publish_durable(self) -> None:
        """Publish the outcomes the committer made durable since (see spool.commit)."""
        durable = self.committer.take_durable()
        if durable:
            with contextlib.suppress(OSError):  # (they wait: the committer tries, and says why)
                self.committer.publish_all(durable)

    def record(self, pending: Pending) -> bool:
        """Write an attempt's outcome and count it; False if the disk refused (it is kept)."""
        try:
            state = self.write_outcome(pending)
        except OSError as exc:
            self.keep_unwritten(pending, exc)
            return False
        if state is None:
            return True
        outcome, fields = pending.outcome, pending.fields
        if state == "done":
            log.info("done %s duration=%.3fs", fields, outcome.duration)
        else:
            error = outcome.error
            log.warning(
                "%s %s duration=%.3fs error=%s: %s",
                state,
                fields,
                outcome.duration,
                error.get("type"),
                error.get("message"),
            )
        return True

    def write_outcome(self, pending: Pending) -> str | None:
        """Hide the claim, stage the outcome, hand it to the committer; return the state
        staged, or None when the claim was lost to recovery (the outcome is dropped).

        Raises: OSError; `pending` then keeps how far it got, and a call again goes on.
        """
        if not self.fence(pending):
            self.unhold(pending.taken)
            log.warning("lost the claim of %s to recovery: this outcome is dropped", pending.fields)
            return None
        if pending.verdict is None:
            pending.verdict = verdict_of(
                pending.taken, pending.task, pending.outcome, pending.policy
            )
        path = stage_verdict(pending.taken, pending.verdict)
        self.unhold(pending.taken)  # (held only while the outcome waited for the disk)
        self.committer.add(Staged(pending.taken, pending.outcome, pending.verdict, path))
        return pending.verdict.state

    def fence(self, pending: Pending) -> bool:
        """Whether the claim is still this worker's, hidden before its outcome is staged.

        The fence: the claim is renamed before the outcome is staged. If a recoverer took it
        (this worker's lease ran out), the rename fails and the outcome is dropped: the
        recoverer's outcome stands. (The hidden claim needs no renewal: its name is new to the
        sweepers, so they wait a whole lease, and the committer's next round publishes its
        outcome, or drops it if a recoverer took the claim meanwhile. If the disk refuses the
        outcome, keep_unwritten shows the claim again and holds its lease while it waits.)
        Raises: OSError other than ENOENT.
        """
        claimed = pending.taken
        if claimed.committed:  # a try again, after a refused write (and unhide failed)
            return os.path.lexists(claimed.path)
        try:
            pending.taken = claimed.hide()
        except FileNotFoundError:
            return False
        self.unhold(claimed)
        return True

    def keep_unwritten(self, pending: Pending, exc: OSError) -> None:
        """The disk refused an outcome: keep it in memory (the handler is not run again), keep
        the claim (and, in shared mode, its lease), claim nothing new, and try again later."""
        if pending not in self.unwritten:
            self.unwritten.append(pending)
        # CRASH: recovery would take this claim, still there, for the one running, and the one
        # after it for unstarted (see spool.handover); without the list it counts each as lost
        self.handed.drop()
        self.show_waiting()
        if pending.taken.committed:  # counted as processing while it waits
            with contextlib.suppress(OSError):
                pending.taken = pending.taken.unhide()
        if self.leases is not None:
            self.leases.hold(pending.taken.path)
        self.write_again_at = time.monotonic() + self.write_backoff.next_pause()
        if self.write_complaint.due(time.time()):
            log.error(
                "cannot record the outcome of %s: %s; it is kept and written once the disk "
                "takes it (%d waiting; no new claims meanwhile)",
                pending.fields,
                describe(exc) if is_disk_fault(exc) else exc,
                len(self.unwritten),
            )

    def write_unwritten(self, now_mono: float) -> bool:
        """Try again to write the outcomes the disk refused, once their pause is over; True
        while some still wait."""
        if not self.unwritten:
            return False
        if now_mono < self.write_again_at:
            return True
        while self.unwritten:
            if not self.record(self.unwritten[0]):
                return True
            self.unwritten.pop(0)
        self.write_backoff.reset()
        self.write_complaint.clear()
        log.info("the disk takes writes again: the waiting outcomes are written")
        return False

    def refused(self) -> bool:
        """Whether outcomes wait for a disk that refused them: to be staged here, or to be
        synced and published by the committer."""
        return bool(self.unwritten) or self.committer.refused is not None

    def outcomes_waiting(self, now_mono: float) -> float | None:
        """While outcomes the disk refused wait (a full disk), the worker claims nothing: try
        them again when due; the seconds until the next try while they wait, else None."""
        if not self.refused():
            if self.shown_waiting:
                self.show_waiting()
            return None
        self.record_pending()  # (an attempt that ended meanwhile joins them, in order)
        waiting_here = self.write_unwritten(now_mono)
        self.show_waiting()
        if waiting_here:
            return self.next_try(now_mono)
        return self.committer.retry_seconds if self.committer.refused is not None else None

    def show_waiting(self) -> None:
        """Say in the worker's info (for status and metrics) whether outcomes wait."""
        waiting = self.refused()
        if waiting != self.shown_waiting:
            self.lock.show_waiting(waiting)
            self.shown_waiting = waiting

    def next_try(self, now_mono: float) -> float:
        """Seconds until the outcomes the disk refused are tried again."""
        return max(0.001, self.write_again_at - now_mono)

    def unhold(self, taken: Claim) -> None:
        if self.leases is not None:
            self.leases.drop(taken.path)
