"""The worker loop: wake or rescan, promote due tasks, claim the next one, run it, finish it.

One worker process serves one or more queues (all of them by default), one attempt at a time,
through its handler process (see attempt). It holds its liveness lock (see workers) from start to
exit (in shared mode, several hosts: it renews the lease of each claim instead, and lists
incoming/ every poll interval; see spool.cluster). Signals: the first SIGTERM/SIGINT stops
claiming and lets the running attempt finish (bounded by its timeout), then the worker exits 0;
a second one, or SIGQUIT at any time, stops the attempt and puts the task back in incoming/
unchanged. (Two TERMs from two senders at one instant arrive as one: `spool up` sends QUIT.)
SIGHUP loads the task modules again, between two attempts (see reload_tasks), unless it comes
with the loss of the terminal the worker started on (a hang-up: it stops as for SIGTERM).

A full or failing disk (see spool.faults) never ends a worker: at start-up it tries again until
it can write its files (start_on_disk); an outcome it cannot write waits in memory, its claim
held, and no new task is claimed until it is written (see recorder); a stop signal then
waits for it too, and a second one leaves the claim to recovery (at least once).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from spool import signals
from spool.attempt import Attempts
from spool.claimed import Aside
from spool.cluster import is_shared
from spool.commit import Committer
from spool.config import Settings
from spool.counts import Recounter
from spool.dispatch import ERROR_PAUSE_SECONDS, Dispatch
from spool.events import outbox_for
from spool.handover import HandOverList
from spool.layout import queue_dirs
from spool.lease import LeaseKeeper
from spool.queues import Queues
from spool.recorder import Recorder
from spool.recovery import Recovery
from spool.retention import Retention
from spool.stats import WorkerStats
from spool.taskcode import TaskCode
from spool.watch import Watcher
from spool.workers import WorkerLock, new_worker_id, start_on_disk
from spool.workflows import batches

log = logging.getLogger(__name__)
REAP_SECONDS = 30.0
POLL_SECONDS = 0.25
RETENTION_SECONDS = 1.0
RESCAN_COST_FACTOR = 20.0


@dataclass
class Timer:
    """Something done every `every` seconds."""

    every: float
    last: float = 0.0

    def due(self, now: float) -> bool:
        return now - self.last >= self.every

    def left(self, now: float) -> float:
        return max(0.0, self.last + self.every - now)


class Worker:
    """One worker process: serves `queues` (all when empty) until stopped, or until drained."""

    def __init__(self, settings: Settings, queues: Sequence[str] = (), burst: bool = False) -> None:
        self.settings, self.burst = settings, burst
        self.fixed_queues = [queue_dirs(settings.root, q).name for q in (queues or settings.queues)]
        self.worker_id = new_worker_id()
        self.shared = is_shared(settings)
        self.leases = LeaseKeeper() if self.shared else None
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.hard_stop = False
        self.watcher = Watcher(settings.root, self.wakeup)
        self.queues = Queues(
            settings.root,
            self.fixed_queues,
            self.worker_id,
            settings.max_file_bytes,
            self.watcher,
            self.shared,
        )
        self.lock = WorkerLock(settings.root, self.worker_id)
        self.code = TaskCode(settings, self.worker_id, self.lock)
        self.stats = WorkerStats(settings.root, self.worker_id)
        self.retention = (
            Retention(settings.root, settings.retention) if settings.retention else None
        )
        self.retention_timer = Timer(RETENTION_SECONDS)
        self.recounter = Recounter(settings.root)
        self.outbox = outbox_for(settings)
        self.committer = Committer(settings.root, self.outbox, self.stats, fenced=self.shared)
        self.recoverer = Recovery(
            settings.root,
            self.worker_id,
            settings.max_file_bytes,
            self.code.known_policy,
            self.stats,
            self.outbox,
            settings.lease_seconds if self.shared else None,
        )
        self.reload_wanted = False  # SIGHUP: load the task modules again between attempts
        self.terminal = signals.Terminal(attached=False, nohup=False)
        self.rescan = Timer(settings.rescan_seconds)
        self.recovery = Timer(settings.recover_seconds)
        self.reaping = Timer(REAP_SECONDS)
        self.polling = False
        self.poll_base = settings.poll_seconds if self.shared else POLL_SECONDS
        self.poll_gap = self.poll_base
        handed = HandOverList(settings.root, self.worker_id, kept=not self.shared)
        self.recorder = Recorder(self.committer, self.lock, self.leases, handed)
        self.aside = Aside(self.queues, self.leases, self.code, self.stats, self.worker_id)
        self.attempts = Attempts(
            settings.root,
            self.worker_id,
            self.code,
            self.stats,
            self.aside,
            self.recorder,
            self.stopping,
            lambda: self.hard_stop,
            handed,
        )
        self.dispatch = Dispatch(
            settings,
            self.queues,
            self.code,
            self.aside,
            self.attempts,
            self.leases,
            self.stopping,
            self.may_extend,
        )

    # ---- life cycle ------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped (or drained, with burst); return the exit code.

        Raises: SpoolError (configuration, handler process start).
        """
        self.terminal = signals.Terminal.now()
        signals.install(self.on_signal, self.on_reload, on_stop_now=self.on_signal)
        queues = start_on_disk(
            self.settings.root, self.fixed_queues, self.lock, self.shared, self.stopping
        )
        if queues is None:  # stopped before the disk let it start
            return 0
        try:
            if self.leases is not None:
                # removed by a sweeper after a partition longer than the lease: write it again
                self.leases.hold(self.lock.info_path, on_lost=self.lock.write_info)
                self.leases.start()
            self.code.start()
            self.committer.start()
            self.attempts.start()
            # watch before the first scan: a file arriving in between is not missed
            watching = self.watcher.start(queues, watch_root=not self.fixed_queues)
            self.polling = self.burst or self.shared or not watching
            for queue in queues:
                self.queues.add(queue, time.time(), time.monotonic())
            log.info(
                "worker %s started: queues %s, tasks %s",
                self.worker_id,
                ", ".join(queues) if self.fixed_queues else "all",
                ", ".join(sorted(self.code.tasks)) or "none",
            )
            self.recovery.last = time.time()
            self.recoverer.run(self.queues, self.recovery.last, time.monotonic())
            return self.loop()
        finally:
            self.recorder.record_pending()
            self.recounter.join()
            if self.recorder.unwritten:  # a hard stop (or an error) while the disk refused them
                log.error(
                    "%d outcome(s) not written: their tasks stay claimed and run again once "
                    "recovered (at least once)",
                    len(self.recorder.unwritten),
                )
            self.committer.close()
            if self.leases is not None:
                self.leases.stop()
            self.stats.flush(time.time(), force=True)
            self.code.executor.stop()
            self.attempts.drop_scratch()
            self.watcher.stop()
            self.lock.release()
            log.info("worker %s stopped", self.worker_id)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stopping.is_set() or signum == signal.SIGQUIT:
            self.hard_stop = True  # (before `stopping`: the loop sees both or the hard stop)
            self.stopping.set()
            log.warning(
                "%s: stopping now; %s",
                name if signum == signal.SIGQUIT else f"second {name}",
                "outcomes not written stay claimed"
                if self.recorder.unwritten
                else "the running task goes back to incoming/",
            )
        else:
            self.stopping.set()
            log.info("%s: no more claims; stopping after the running attempt", name)
        self.wakeup.set()

    def on_reload(self, signum: int, frame: FrameType | None) -> None:
        if self.terminal.hung_up():  # its terminal was closed: stop as for SIGTERM (or nohup)
            if self.terminal.nohup:
                log.info("SIGHUP: the terminal is gone; going on (nohup)")
            else:
                self.on_signal(signum, frame)
            return
        self.reload_wanted = True  # acted on between attempts (see loop)
        log.info("SIGHUP: loading the task code again (after the running attempt, if any)")
        self.wakeup.set()

    # ---- the loop --------------------------------------------------------------------

    def loop(self) -> int:
        self.rescan.last = time.time()
        fresh = True  # (burst) nothing claimed since the last full rescan
        while not self.stopping.is_set():
            self.wakeup.clear()  # clear before looking: an event during the look is kept
            if self.reload_wanted:  # between attempts: none runs, none waits to be recorded
                self.reload_tasks()
            else:
                self.code.follow_restart()
            if not self.look(time.time(), time.monotonic()):
                continue
            waiting = self.recorder.outcomes_waiting(time.monotonic())
            if waiting is not None:  # a full disk: claim nothing until they are written
                self.stopping.wait(waiting)
                continue
            taken = self.queues.claim_next(time.monotonic())
            if taken is not None:
                self.dispatch.run_claimed(taken, time.time(), time.monotonic())
                fresh = False
                continue
            self.recorder.record_pending()  # nothing to run next: record the last outcome now
            self.committer.hurry()  # and publish it without waiting for more
            if not self.burst:
                self.wakeup.wait(self.sleep_seconds(time.time(), time.monotonic()))
                continue
            put_back = self.queues.put_back_wait(time.monotonic())
            if put_back is not None:  # files being written in place: wait for them
                self.stopping.wait(max(0.001, put_back))
            elif fresh:  # nothing due, even right after a full rescan
                break
            else:
                self.rescan_all(time.time(), time.monotonic())
                fresh = True
        self.recorder.record_pending()
        self.write_before_stopping()
        return 0

    def may_extend(self) -> bool:
        """Whether a running batch may take more (see spool.handover), the tasks that arrived
        taken in first (a higher priority goes first); not when the loop has something to do
        before the next claim: a reload, a rescan after lost events, a new queue."""
        hints = self.watcher.hints
        if self.reload_wanted or hints.rescan or hints.new_queue:
            return False
        self.queues.absorb(hints, time.time(), time.monotonic())
        return True

    def look(self, now: float, now_mono: float) -> bool:
        """Take in the hints, do what is due (rescans, recovery, retention), promote due tasks;
        False after an I/O error (logged, and paused on)."""
        try:
            self.stats.flush(now)
            if self.queues.absorb(self.watcher.hints, now, now_mono):  # events were lost: look now
                self.rescan_all(time.time(), time.monotonic())
            self.housekeeping(now, now_mono)
            self.queues.promote_due(now, now_mono)
        except OSError as exc:  # e.g. a directory made unreadable: log, wait, go on
            if self.burst:
                raise
            log.error("cannot look at the spool: %s", exc)
            self.stopping.wait(ERROR_PAUSE_SECONDS)
            return False
        return True

    def housekeeping(self, now: float, now_mono: float) -> None:
        # (a burst worker rescans when it runs dry, in the loop; never in the middle of work)
        polled = self.polling and now - self.rescan.last >= self.poll_gap
        if not self.burst and (self.rescan.due(now) or polled):
            self.rescan_all(now, now_mono)
        if self.recovery.due(now):
            self.recovery.last = now
            self.recoverer.run(self.queues, now, now_mono)
        if self.retention is not None and self.retention_timer.due(now):
            self.retention_timer.last = now
            deleted = self.retention.step(self.queues.names())
            for (queue, state), n in deleted.items():
                for _ in range(n):
                    self.stats.record(queue, f"{state}_removed")
                log.info("retention: deleted %d task(s) from %s/%s", n, queue, state)
        if self.reaping.due(now):
            self.reaping.last = now
            self.settle_batches()
            self.recoverer.reap(now, now_mono)
            self.recounter.maybe_start(self.queues.names(), now)

    def settle_batches(self) -> None:
        """Send the callbacks of complete batches whose last ends missed each other (see
        batches.settle_open); a disk that refuses is logged, and tried again next time."""
        try:
            settled = batches.settle_open(self.settings.root)
        except OSError as exc:
            log.error("cannot settle batches (trying again later): %s", exc)
            return
        if settled:
            log.info("settled %d complete batch(es) whose callbacks were not sent", settled)

    def rescan_all(self, now: float, now_mono: float) -> None:
        self.queues.rescan_all(now, now_mono)
        # a rescan of a huge backlog is not free: keep it under 5% of the time
        took = time.time() - now
        self.rescan.every = max(self.settings.rescan_seconds, RESCAN_COST_FACTOR * took)
        self.poll_gap = max(self.poll_base, RESCAN_COST_FACTOR * took)
        self.rescan.last = time.time()

    def sleep_seconds(self, now: float, now_mono: float) -> float:
        waits = [self.rescan.left(now), self.recovery.left(now)]
        if self.polling:
            waits.append(self.poll_gap)
        due = self.queues.next_wait(now, now_mono)
        if due is not None:
            waits.append(due)
        return max(0.001, min(waits))

    def write_before_stopping(self) -> None:
        """Stopping with outcomes the disk refused: keep trying until they are written or a
        hard stop comes (their claims stay then: recovery runs those tasks again)."""
        if self.recorder.unwritten:
            log.warning(
                "stopping: %d outcome(s) wait for the disk; a second signal stops without them",
                len(self.recorder.unwritten),
            )
        while self.recorder.write_unwritten(time.monotonic()) and not self.hard_stop:
            self.wakeup.wait(self.recorder.next_try(time.monotonic()))
            self.wakeup.clear()

    # ---- task code -------------------------------------------------------------------

    def reload_tasks(self) -> None:
        """Load the task code again (see TaskCode.reload), between two attempts."""
        self.reload_wanted = False  # (a SIGHUP during the import asks for one more reload)
        self.recorder.record_pending()  # first: a reload never overlaps an attempt or its recording
        self.code.reload()


def run_worker(settings: Settings, queues: Sequence[str] = (), burst: bool = False) -> int:
    """Run a worker in this process until it stops. Raises: SpoolError."""
    return Worker(settings, queues, burst).run()
