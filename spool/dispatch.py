"""From a claim to an attempt: what a worker does with the task it has just claimed.

It reads the claimed file (see claimed.read_claimed): a task it cannot run now is set aside
(rejected, put back, left for the workers that know it), one not due yet goes to delayed/.
A runnable one starts with its cap's seat and rate slot (see attempt). With a backlog, the
worker claims more and runs them as one batch (see spool.handover). An I/O error or a handler
process that cannot start puts the task back in incoming/ and pauses the worker a moment;
nothing here ends it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from spool import envelope, handover
from spool.attempt import Attempts
from spool.claim import Claim
from spool.claimed import Aside, NotRunnable, read_claimed
from spool.config import Settings
from spool.envelope import TaskDict
from spool.errors import ConfigError
from spool.lease import LeaseKeeper
from spool.queues import Queues
from spool.settle import Settling
from spool.taskcode import TaskCode

log = logging.getLogger("spool.worker")  # these lines are the worker's
ERROR_PAUSE_SECONDS = 1.0  # after an I/O error (or when filesystem events are unavailable)


class Dispatch:
    """One worker's way from a claim to an attempt (or a batch of them)."""

    def __init__(
        self,
        settings: Settings,
        queues: Queues,
        code: TaskCode,
        aside: Aside,
        attempts: Attempts,
        leases: LeaseKeeper | None,
        stopping: threading.Event,
        may_extend: Callable[[], bool],
    ) -> None:
        self.settings, self.queues, self.code = settings, queues, code
        self.aside, self.attempts, self.leases = aside, attempts, leases
        self.stopping, self.may_extend = stopping, may_extend
        shared = leases is not None
        self.sizing = handover.Sizing(1 if shared else settings.claim_batch)
        self.settling = Settling(trust_mtime=not shared)

    def run_claimed(self, taken: Claim, now: float, now_mono: float) -> None:
        if self.leases is not None:
            self.leases.hold(taken.path)
        if self.sizing.most > 1:
            self.guarded(taken, lambda: self.process_gathered(taken, now, now_mono))
        else:
            self.guarded(taken, lambda: self.process(taken, now, now_mono))

    def guarded(self, taken: Claim, run: Callable[[], None]) -> None:
        """Run `taken` (and what came with it); an I/O or configuration error puts it back."""
        try:
            run()
        except OSError as exc:  # the disk failed, or (shared) the claim was taken
            self.aside.give_back(taken, f"cannot process {taken.name}: {exc}")
            self.stopping.wait(ERROR_PAUSE_SECONDS)
        except ConfigError as exc:
            # the handler process had to start again (after a timeout or a crash) and a
            # tasks module no longer imports: the task waits in incoming/, the worker lives
            self.aside.give_back(taken, f"cannot run {taken.name}: {exc}")
            self.stopping.wait(ERROR_PAUSE_SECONDS)

    def process(
        self, taken: Claim, now: float, now_mono: float, task: TaskDict | None = None
    ) -> None:
        """Validate (unless `task` is given), run and finish one claimed task (claimed at
        `now`); nothing here may stop the worker."""
        task = task or self.ready(taken, now, now_mono)
        if task is None:
            return
        attempts = self.attempts
        with attempts.seated(taken, task, now_mono) as seated:
            if seated and attempts.slot_for(taken, task, now, now_mono):
                attempts.attempt(taken, task)

    def ready(self, taken: Claim, now: float, now_mono: float) -> TaskDict | None:
        """The claimed task, due and runnable; None when it was set aside or put off."""
        read = read_claimed(
            taken, self.settings.max_file_bytes, self.settling, self.code, now, now_mono
        )
        if isinstance(read, NotRunnable):
            self.aside.set_aside(taken, read, now, now_mono)
            return None
        if envelope.due_at(read) > now:
            self.aside.put_off(taken, read)
            return None
        return read

    def batchable(self, taken: Claim, task: TaskDict) -> bool:
        """Whether a task may share a batch: not with a cap or a rate limit (its seat or slot
        is taken as it starts), not at_most_once (after a SIGKILL, recovery could not tell
        whether it ran: see spool.handover)."""
        code = self.code
        return (
            code.cap_for(task) is None
            and code.limit_for(task, taken.dirs.name) is None
            and not code.policy_for(task).at_most_once
        )

    def process_gathered(self, first: Claim, now: float, now_mono: float) -> None:
        """Claim more while a backlog waits, and run them in one batch, extended while its last
        task runs (see spool.handover); a lone task runs as one.

        Raises: OSError, ConfigError (`first` is to go back)."""
        task = self.ready(first, now, now_mono)
        if task is None:
            return
        batch = self.gather(first, task, now, now_mono)
        if len(batch) > 1:  # (a ConfigError: they all went back)
            self.sizing.after(*self.attempts.attempt_batch(batch, self.gather_more))
        elif batch:  # (alone: its cap's seat and rate slot, if it has them, are taken here)
            self.process(first, now, now_mono, task=task)
            self.sizing.after(1, 1)

    def gather_more(self) -> list[tuple[Claim, TaskDict]]:
        """The next batch, claimed as a running batch's last task starts (see spool.handover);
        none when the worker is to look at its spool first (see Worker.may_extend). (A stop
        was looked for just before: see attempt.BatchRun.extended.)"""
        if not self.may_extend():
            return []
        now, now_mono = time.time(), time.monotonic()
        first = self.queues.claim_next(now_mono)
        task = None if first is None else self.ready_or_back(first, now, now_mono)
        if first is None or task is None:
            return []
        return self.gather(first, task, now, now_mono, alone=False)

    def gather(
        self, first: Claim, task: TaskDict, now: float, now_mono: float, alone: bool = True
    ) -> list[tuple[Claim, TaskDict]]:
        """A batch from `first` on (see handover.gather), claimed at `now`."""
        return handover.gather(
            (first, task),
            lambda taken: self.ready_or_back(taken, now, now_mono),
            lambda: None if self.stopping.is_set() else self.queues.claim_next(now_mono),
            self.batchable,
            self.aside.hand_back,
            self.sizing.size,
            alone,
        )

    def ready_or_back(self, taken: Claim, now: float, now_mono: float) -> TaskDict | None:
        """`ready`, or None with the task given back after an I/O error."""
        try:
            return self.ready(taken, now, now_mono)
        except OSError as exc:
            self.aside.give_back(taken, f"cannot process {taken.name}: {exc}")
            return None
