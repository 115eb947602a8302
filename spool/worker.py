"""The worker loop: wake or rescan, promote due tasks, claim the next one, run it, finish it.

One worker process serves one or more queues (all of them by default), one attempt at a time,
through its handler process (see execute). It holds its liveness lock (see workers) from start to
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

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from spool import envelope, signals
from spool.claim import Claim, release
from spool.claimed import NotRunnable, read_claimed
from spool.cluster import is_shared
from spool.config import Settings
from spool.context import context_fields
from spool.counts import Recounter
from spool.envelope import TaskDict
from spool.errors import ConfigError
from spool.events import outbox_for
from spool.faults import Backoff, Complaint, describe, is_disk_fault
from spool.finish import Committer, reject
from spool.layout import (
    DEFAULT_QUEUE,
    delayed_name,
    existing_queues,
    output_scratch,
    queue_dirs,
)
from spool.lease import LeaseKeeper
from spool.queues import Queues
from spool.recorder import Pending, Recorder
from spool.recovery import Recovery
from spool.retention import Retention
from spool.settle import Settling
from spool.stats import WorkerStats
from spool.taskcode import TaskCode
from spool.watch import Watcher
from spool.workers import WorkerLock, new_worker_id

log = logging.getLogger(__name__)
REAP_SECONDS = 30.0
POLL_SECONDS = 0.25
RETENTION_SECONDS = 1.0
ERROR_PAUSE_SECONDS = 1.0  # when filesystem events are unavailable
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
        self.committer = Committer(settings.root)
        self.lock = WorkerLock(settings.root, self.worker_id)
        self.code = TaskCode(settings, self.worker_id, self.lock)
        self.stats = WorkerStats(settings.root, self.worker_id)
        self.retention = (
            Retention(settings.root, settings.retention) if settings.retention else None
        )
        self.retention_timer = Timer(RETENTION_SECONDS)
        self.recounter = Recounter(settings.root)
        self.outbox = outbox_for(settings)
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
        self.recorder = Recorder(self.committer, self.outbox, self.stats, self.lock, self.leases)
        self.settling = Settling(trust_mtime=not self.shared)

    # ---- life cycle ------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped (or drained, with burst); return the exit code.

        Raises: SpoolError (configuration, handler process start).
        """
        self.terminal = signals.Terminal.now()
        signals.install(self.on_signal, self.on_reload, on_stop_now=self.on_signal)
        queues = self.start_on_disk()
        if queues is None:  # stopped before the disk let it start
            return 0
        try:
            if self.leases is not None:
                # removed by a sweeper after a partition longer than the lease: write it again
                self.leases.hold(self.lock.info_path, on_lost=self.lock.write_info)
                self.leases.start()
            self.code.start()
            self.committer.start()
            # watch before the first scan: a file arriving in between is not missed
            watching = self.watcher.start(queues, watch_root=not self.fixed_queues)
            self.polling = self.burst or self.shared or not watching
            for queue in queues:
                self.queues.add(queue)
            log.info(
                "worker %s started: queues %s, tasks %s",
                self.worker_id,
                ", ".join(queues) if self.fixed_queues else "all",
                ", ".join(sorted(self.code.tasks)) or "none",
            )
            self.recovery.last = time.time()
            self.recoverer.run(self.queues)
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
            with contextlib.suppress(OSError):  # (the last attempt's output is beside its task)
                output_scratch(self.settings.root, self.worker_id).unlink(missing_ok=True)
            self.watcher.stop()
            self.lock.release()
            log.info("worker %s stopped", self.worker_id)

    def start_on_disk(self) -> list[str] | None:
        """Make the directories, take the lock, write the info file: the queues to serve.

        A full or failing disk is logged once and tried again with a growing pause (a worker
        never exits for it, so Supervisor never gives up on it); None if stopped meanwhile.
        """
        backoff, complaint = Backoff(cap=10.0), Complaint()
        while True:
            try:
                os.makedirs(self.settings.root, exist_ok=True)
                queues = self.fixed_queues or existing_queues(self.settings.root)
                queues = queues or [DEFAULT_QUEUE]
                for queue in queues:
                    queue_dirs(self.settings.root, queue).create()
                self.lock.acquire(self.start_info(queues))
                if backoff.failures:
                    log.info("the disk takes writes again: starting")
                return queues
            except OSError as exc:
                if not is_disk_fault(exc):
                    raise
                if complaint.due(time.time()):
                    log.error(
                        "cannot start: %s; trying again until the disk takes writes", describe(exc)
                    )
                if self.stopping.wait(backoff.next_pause()):
                    self.lock.release_if_held()
                    return None

    def start_info(self, queues: list[str]) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.time(),
            "queues": queues,
            **({"shared": True} if self.shared else {}),
        }

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
            if not self.look(time.time()):
                continue
            waiting = self.recorder.outcomes_waiting()
            if waiting is not None:  # a full disk: claim nothing until they are written
                self.stopping.wait(waiting)
                continue
            taken = self.queues.claim_next()
            if taken is not None:
                self.run_claimed(taken)
                fresh = False
                continue
            self.recorder.record_pending()  # nothing to run next: record the last outcome now
            if not self.burst:
                self.wakeup.wait(self.sleep_seconds(time.time()))
                continue
            put_back = self.queues.put_back_wait()
            if put_back is not None:  # files being written in place: wait for them
                self.stopping.wait(max(0.001, put_back))
            elif fresh:  # nothing due, even right after a full rescan
                break
            else:
                self.rescan_all(time.time())
                fresh = True
        self.recorder.record_pending()
        self.write_before_stopping()
        return 0

    def look(self, now: float) -> bool:
        """Take in the hints, do what is due (rescans, recovery, retention), promote due tasks;
        False after an I/O error (logged, and paused on)."""
        try:
            self.stats.flush(now)
            if self.queues.absorb(self.watcher.hints):  # events were lost: look now
                self.rescan_all(time.time())
            self.housekeeping(now)
            self.queues.promote_due(now)
        except OSError as exc:  # e.g. a directory made unreadable: log, wait, go on
            if self.burst:
                raise
            log.error("cannot look at the spool: %s", exc)
            self.stopping.wait(ERROR_PAUSE_SECONDS)
            return False
        return True

    def run_claimed(self, taken: Claim) -> None:
        if self.leases is not None:
            self.leases.hold(taken.path)
        try:
            self.process(taken)
        except OSError as exc:  # the disk failed, or (shared) the claim was taken
            self.give_back(taken, f"cannot process {taken.name}: {exc}")
        except ConfigError as exc:
            # the handler process had to start again (after a timeout or a crash) and a
            # tasks module no longer imports: the task waits in incoming/, the worker lives
            self.give_back(taken, f"cannot run {taken.name}: {exc}")

    def housekeeping(self, now: float) -> None:
        # (a burst worker rescans when it runs dry, in the loop; never in the middle of work)
        polled = self.polling and now - self.rescan.last >= self.poll_gap
        if not self.burst and (self.rescan.due(now) or polled):
            self.rescan_all(now)
        if self.recovery.due(now):
            self.recovery.last = now
            self.recoverer.run(self.queues)
        if self.retention is not None and self.retention_timer.due(now):
            self.retention_timer.last = now
            deleted = self.retention.step(self.queues.names())
            for (queue, state), n in deleted.items():
                for _ in range(n):
                    self.stats.record(queue, f"{state}_removed")
                log.info("retention: deleted %d task(s) from %s/%s", n, queue, state)
        if self.reaping.due(now):
            self.reaping.last = now
            self.recoverer.reap(now)
            self.recounter.maybe_start(self.queues.names(), now)

    def rescan_all(self, now: float) -> None:
        self.queues.rescan_all()
        # a rescan of a huge backlog is not free: keep it under 5% of the time
        took = time.time() - now
        self.rescan.every = max(self.settings.rescan_seconds, RESCAN_COST_FACTOR * took)
        self.poll_gap = max(self.poll_base, RESCAN_COST_FACTOR * took)
        self.rescan.last = time.time()

    def sleep_seconds(self, now: float) -> float:
        waits = [self.rescan.left(now), self.recovery.left(now)]
        if self.polling:
            waits.append(self.poll_gap)
        due = self.queues.next_wait(now)
        if due is not None:
            waits.append(due)
        return max(0.001, min(waits))

    def unhold(self, taken: Claim) -> None:
        if self.leases is not None:
            self.leases.drop(taken.path)

    # ---- one task ----------------------------------------------------------------------

    def process(self, taken: Claim) -> None:
        """Validate, run and finish one claimed task; nothing here may stop the worker."""
        task = self.read_claimed(taken)
        if task is None:
            return
        if envelope.due_at(task) > time.time():
            self.put_off(taken, task)
            return
        policy = self.code.policy_for(task)
        attempt = int(task.get("attempts", 0)) + 1
        fields = self.log_fields(taken, task, attempt)
        log.info("claimed %s", fields)
        timeout = self.code.timeout_for(task)
        dirs = taken.dirs
        beside = f"{dirs.attempts}/{task['id']}"  # (dirs.beside, as text: a hot path)
        request = {
            "task": task["task"],
            "args": task.get("args", []),
            "kwargs": task.get("kwargs", {}),
            "context": context_fields(
                task,
                dirs.name,
                self.worker_id,
                policy.max_retries,
                timeout,
                time.time(),
                beside,
                str(dirs.tmp),
            ),
            "log": f"{beside}/{attempt}.log",
        }
        outcome = self.code.executor.run(
            request,
            timeout,
            lambda: self.hard_stop,
            self.recorder.record_pending,
            beside,
        )
        if outcome.interrupted:
            self.unhold(taken)
            release(taken)
            log.warning("released %s (stopped during the attempt)", fields)
            return
        self.recorder.defer(Pending(taken, task, outcome, policy, fields))  # (see recorder)

    def write_before_stopping(self) -> None:
        """Stopping with outcomes the disk refused: keep trying until they are written or a
        hard stop comes (their claims stay then: recovery runs those tasks again)."""
        if self.recorder.unwritten:
            log.warning(
                "stopping: %d outcome(s) wait for the disk; a second signal stops without them",
                len(self.recorder.unwritten),
            )
        while self.recorder.write_unwritten() and not self.hard_stop:
            self.wakeup.wait(self.recorder.next_try())
            self.wakeup.clear()

    def give_back(self, taken: Claim, why: str) -> None:
        """Put a claimed task back after an I/O error, and pause a moment before going on."""
        log.error("%s; the task goes back to incoming/", why)
        self.unhold(taken)
        with contextlib.suppress(OSError):
            release(taken)
        self.stopping.wait(ERROR_PAUSE_SECONDS)

    def read_claimed(self, taken: Claim) -> TaskDict | None:
        """The claimed file as a runnable task, or None after setting it aside (see claimed):
        rejected to failed/, put back to read again, or left to the workers that know it."""
        read = read_claimed(taken, self.settings.max_file_bytes, self.settling, self.code)
        if not isinstance(read, NotRunnable):
            return read
        if read.unknown is not None:
            self.unknown(taken, read.unknown)
        elif read.read_again_in > 0:
            self.put_back(taken, read.read_again_in)
        else:
            self.reject(taken, read.reason)
        return None

    def unknown(self, taken: Claim, name: str) -> None:
        """A task this worker cannot run: leave it for the workers that know it (a deploy
        under way), or reject it when none has known it for the grace (see spool.manifest)."""
        wait = self.code.wait_for_unknown(name, time.time())
        if wait is None:
            self.reject(taken, f"unknown task {name!r}: no configured tasks module registers it")
            return
        self.unhold(taken)
        release(taken)
        self.queues[taken.dirs.name].hold(taken.name, wait)
        log.info(
            "left queue=%s file=%s task=%s to the workers that know it (again in %.0f s)",
            taken.dirs.name,
            taken.name,
            name,
            wait,
        )

    def put_back(self, taken: Claim, seconds: float) -> None:
        """Return a claimed file to incoming/ and leave it there for `seconds`."""
        self.unhold(taken)
        release(taken)
        self.queues[taken.dirs.name].look_again(taken.name, seconds)
        log.debug(
            "%s/%s is not JSON yet: read again in %.2f s", taken.dirs.name, taken.name, seconds
        )

    def reject(self, taken: Claim, reason: str) -> None:
        self.unhold(taken)
        try:
            dest = reject(taken, reason, self.worker_id, self.stats)
        except OSError as exc:
            log.error("cannot move rejected %s to failed/: %s", taken.name, exc)
            return
        log.warning(
            "rejected queue=%s file=%s stored=%s reason=%s",
            taken.dirs.name,
            taken.name,
            dest.name,
            reason,
        )

    def put_off(self, taken: Claim, task: TaskDict) -> None:
        """A claimed task that is not due yet goes to delayed/ unchanged (no attempt)."""
        due_us = int(envelope.due_at(task) * 1_000_000)
        entry = delayed_name(due_us, taken.name)
        self.unhold(taken)
        os.rename(taken.path, taken.dirs.delayed / entry)
        self.queues[taken.dirs.name].add_delayed(entry)

    def log_fields(self, taken: Claim, task: TaskDict, attempt: int) -> str:
        return f"queue={taken.dirs.name} id={task['id']} task={task['task']} attempt={attempt}"

    # ---- task code -------------------------------------------------------------------

    def reload_tasks(self) -> None:
        """Load the task code again (see TaskCode.reload), between two attempts."""
        self.reload_wanted = False  # (a SIGHUP during the import asks for one more reload)
        self.recorder.record_pending()  # first: a reload never overlaps an attempt or its recording
        self.code.reload()


def run_worker(settings: Settings, queues: Sequence[str] = (), burst: bool = False) -> int:
    """Run a worker in this process until it stops. Raises: SpoolError."""
    return Worker(settings, queues, burst).run()
