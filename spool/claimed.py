"""A claimed file, read: the task to run, or why it is none.

Read no-follow and size-limited (see fsio.read_regular), then parsed and validated as a task
file (see envelope). A file that is none is rejected with the reason (see conclude.keep_rejected);
one that is not JSON yet may still be being written in place, and is read again later (see
settle); a task this worker's code does not register may be known to other workers (a deploy
under way: see manifest.unknown_fate). Deciding (read_claimed) is kept apart from acting
(Aside: what the worker does with a claimed file it does not run now).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

from spool import envelope
from spool.claim import Claim, release
from spool.envelope import FieldError, NotJSON, TaskDict
from spool.finish import reject
from spool.fsio import UnreadableFile, read_regular
from spool.layout import delayed_name
from spool.lease import LeaseKeeper
from spool.queues import Queues
from spool.settle import Settling
from spool.stats import WorkerStats
from spool.taskcode import TaskCode

log = logging.getLogger("spool.worker")  # these lines are the worker's


@dataclass(frozen=True)
class NotRunnable:
    """Why a claimed file is no task to run now: `unknown` names a task this worker does not
    know; else `read_again_in` > 0 puts it back for that long; else it is rejected for `reason`."""

    reason: str = ""
    read_again_in: float = 0.0
    unknown: str | None = None


def read_claimed(
    taken: Claim,
    max_file_bytes: int,
    settling: Settling,
    code: TaskCode,
    now: float,
    now_mono: float,
) -> TaskDict | NotRunnable:
    """The claimed file as a runnable task (with its id, enqueued_at and attempts), or why not."""
    key = (taken.dirs.name, taken.name)
    try:
        data, st = read_regular(taken.path, max_file_bytes)
    except UnreadableFile as exc:
        return NotRunnable(str(exc))
    except OSError as exc:
        return NotRunnable(f"cannot read: {exc.strerror}")
    try:
        task = envelope.parse_task_bytes(data)
    except NotJSON as exc:
        wait = settling.wait_for(key, data, st.st_mtime_ns, now, now_mono)
        return NotRunnable(str(exc), read_again_in=wait)  # (> 0: maybe still being written)
    except FieldError as exc:
        return NotRunnable(str(exc))
    settling.settled(key)
    if task["task"] not in code.tasks:
        return NotRunnable(unknown=task["task"])
    unbound = code.unbound(task)
    if unbound is not None:
        return NotRunnable(unbound)
    task.setdefault("id", envelope.id_of_name(taken.name, st.st_mtime))
    task.setdefault("enqueued_at", st.st_mtime)
    task.setdefault("attempts", 0)
    return task


@dataclass
class Aside:
    """What a worker does with a claimed file it does not run now: put it back (to read again,
    or for the workers that know its task), off (not due yet), or reject it to failed/."""

    queues: Queues
    leases: LeaseKeeper | None
    code: TaskCode
    stats: WorkerStats
    worker_id: str

    def set_aside(self, taken: Claim, read: NotRunnable, now: float, now_mono: float) -> None:
        if read.unknown is not None:
            self.unknown(taken, read.unknown, now, now_mono)
        elif read.read_again_in > 0:
            self.put_back(taken, read.read_again_in, now_mono)
        else:
            self.reject(taken, read.reason, now)

    def release(self, taken: Claim) -> None:
        """Back to incoming/ unchanged (no attempt), its lease dropped."""
        if self.leases is not None:
            self.leases.drop(taken.path)
        release(taken)

    def hand_back(self, taken: Claim) -> None:
        """Back to incoming/ unchanged and ready again at once (a batch's task that did not
        start, or one that may not share a batch); a disk that refuses is logged."""
        try:
            self.release(taken)
        except OSError as exc:  # the claim stays; recovery sends it back once we are gone
            log.error("cannot put back %s/%s: %s", taken.dirs.name, taken.name, exc)
            return
        self.queues[taken.dirs.name].add_ready(taken.name)

    def give_back(self, taken: Claim, why: str) -> None:
        """Put a claimed task back after an I/O error (the caller pauses before going on)."""
        log.error("%s; the task goes back to incoming/", why)
        with contextlib.suppress(OSError):
            self.release(taken)

    def unknown(self, taken: Claim, name: str, now: float, now_mono: float) -> None:
        """A task this worker cannot run: leave it for the workers that know it (a deploy
        under way), or reject it when none has known it for the grace (see spool.manifest)."""
        wait = self.code.wait_for_unknown(name, now, now_mono)
        if wait is None:
            self.reject(
                taken, f"unknown task {name!r}: no configured tasks module registers it", now
            )
            return
        self.release(taken)
        self.queues[taken.dirs.name].hold(taken.name, wait, now_mono)
        log.info(
            "left queue=%s file=%s task=%s to the workers that know it (again in %.0f s)",
            taken.dirs.name,
            taken.name,
            name,
            wait,
        )

    def hold_for_slot(self, taken: Claim, key: str, seconds: float, now_mono: float) -> None:
        """A task over its rate or cap (see workflows.rates, caps): back to incoming/
        unchanged, left alone until a slot or seat may be had."""
        self.release(taken)
        # (read again then, like a file being written in place: a burst worker waits for it)
        self.queues[taken.dirs.name].look_again(taken.name, seconds, now_mono)
        log.debug("%s/%s waits %.2f s for a slot of %s", taken.dirs.name, taken.name, seconds, key)

    def put_back(self, taken: Claim, seconds: float, now_mono: float) -> None:
        """Return a claimed file to incoming/ and leave it there for `seconds`."""
        self.release(taken)
        self.queues[taken.dirs.name].look_again(taken.name, seconds, now_mono)
        log.debug(
            "%s/%s is not JSON yet: read again in %.2f s", taken.dirs.name, taken.name, seconds
        )

    def reject(self, taken: Claim, reason: str, now: float) -> None:
        if self.leases is not None:
            self.leases.drop(taken.path)
        try:
            dest = reject(taken, reason, self.worker_id, now, self.stats)
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
        if self.leases is not None:
            self.leases.drop(taken.path)
        os.rename(taken.path, taken.dirs.delayed / entry)
        self.queues[taken.dirs.name].add_delayed(entry)
