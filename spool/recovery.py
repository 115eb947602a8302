"""Recovery: what a worker does about other workers that died.

Every `recover_seconds` it takes over the claims of dead workers (see claim.abandoned; on one
host: whose lock is free; in shared mode: whose lease ran out, see spool.lease) and sends each
task back to incoming/ with attempts + 1 and lost + 1, or to failed/ when it was lost too often
(its `max_lost`, or once for an `at_most_once` task; see decision.lose), or drops
the claim when the task's outcome was already written; on one host it kills what a dead
worker's handler left running. Every half minute it deletes the lock and info files of dead
workers that own no claim, and folds their counts into the archive.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from spool import envelope, handover, stats
from spool.claim import Claim, abandoned, release
from spool.decision import RetryPolicy
from spool.envelope import FieldError, TaskDict
from spool.events import Outbox
from spool.faults import Complaint
from spool.finish import recover
from spool.fsio import UnreadableFile, list_names, read_regular
from spool.index import QueueIndex
from spool.layout import QueueDirs, existing_queues, split_processing
from spool.lease import LeaseWatch
from spool.stats import WorkerStats
from spool.workers import OrphanKills, is_alive, reap_dead_workers, reap_expired_workers
from spool.workflows import caps

log = logging.getLogger(__name__)


class Recovery:
    """One worker's recovery of the others' claims."""

    def __init__(
        self,
        root: Path,
        worker_id: str,
        max_file_bytes: int,
        policy_for: Callable[[TaskDict], RetryPolicy | None],
        counts: WorkerStats,
        outbox: Outbox | None = None,
        lease_seconds: float | None = None,
    ) -> None:
        self.root, self.worker_id, self.max_file_bytes = root, worker_id, max_file_bytes
        self.policy_for, self.counts, self.outbox = policy_for, counts, outbox
        self.orphans = OrphanKills(root)
        # shared mode (a lease period given): liveness is the claim's lease, not a lock
        self.claim_leases = LeaseWatch(lease_seconds) if lease_seconds else None
        self.worker_leases = LeaseWatch(lease_seconds) if lease_seconds else None
        self.complaint = Complaint()  # a disk that refuses recovery: logged once a minute
        # (queue, name) of a dead worker's claims that may have started, by worker id: its
        # others never did (see spool.handover); absent or None: every claim may have
        self.maybe_started: dict[str, set[tuple[str, str]] | None] = {}

    def run(self, indexes: Iterable[QueueIndex], now: float, now_mono: float) -> None:
        """Send the claims of dead workers back (or to failed/ when lost too often)."""
        if self.claim_leases is not None:
            self.run_shared(list(indexes), self.claim_leases, now, now_mono)
            return
        alive: dict[str, bool] = {}
        self.maybe_started.clear()

        def is_dead(entry: str, owner: str) -> bool:
            if owner == self.worker_id:
                return False
            if owner not in alive:
                alive[owner] = is_alive(self.root, owner)
                if not alive[owner]:  # (before any of its claims is taken over)
                    self.maybe_started[owner] = handover.maybe_started(self.root, owner)
            return not alive[owner]

        for index in list(indexes):
            self.recover_from(index, is_dead, now)
        for worker_id, lives in alive.items():
            if not lives:
                self.orphans.kill_once(worker_id)

    def run_shared(
        self, indexes: list[QueueIndex], leases: LeaseWatch, now: float, now_mono: float
    ) -> None:
        """Recover the claims whose lease ran out, this worker's own included: a claim whose
        rename reply was lost is on the server but not held (nothing renews it)."""
        seen: list[str] = []

        def expired(dirs: QueueDirs) -> Callable[[str, str], bool]:
            def is_dead(entry: str, owner: str) -> bool:
                key = f"{dirs.name}/{entry}"
                seen.append(key)
                return leases.stat_expired(key, dirs.processing / entry, now_mono)

            return is_dead

        for index in indexes:
            self.recover_from(index, expired(index.dirs), now)
        leases.keep_only(seen)

    def recover_from(
        self, index: QueueIndex, is_dead: Callable[[str, str], bool], now: float
    ) -> None:
        for taken, dead in abandoned(index.dirs, self.worker_id, is_dead):
            try:
                self.recover_one(index, taken, dead, now)
            except OSError as exc:  # e.g. a full disk: hand the claim back to try again later
                if self.complaint.due(time.time()):
                    log.error("cannot recover %s (tried again later): %s", taken.name, exc)
                hand_back(taken, dead)

    def recover_one(self, index: QueueIndex, taken: Claim, dead: str, now: float) -> None:
        queue = index.dirs.name
        task = self.read_task(taken)
        unstarted = self.never_started(queue, taken, dead)
        if unstarted:
            release(taken)  # (no attempt, see spool.handover)
            state = "incoming"
        else:
            policy = self.policy_for(task) if task is not None else None
            state = recover(taken, task, dead, policy, now, self.outbox, self.counts)
            if state != "finished":
                self.counts.record(queue, "recovered")
        if task is not None:  # (this worker alone took the claim over: see workflows.caps)
            caps.free_seats_of(self.root, str(task["id"]), dead, now)
        log.warning(
            "recovered queue=%s id=%s from dead worker %s -> %s%s",
            queue,
            task.get("id") if task else taken.name,
            dead,
            state,
            " (not started)" if unstarted else "",
        )
        if state == "incoming":
            index.add_ready(taken.name)

    def never_started(self, queue: str, taken: Claim, dead: str) -> bool:
        """Whether a dead worker's claim surely never started (see spool.handover); a hidden
        one ran (its outcome may be written: recover finds it)."""
        started = self.maybe_started.get(dead)
        return started is not None and not taken.committed and (queue, taken.name) not in started

    def read_task(self, taken: Claim) -> TaskDict | None:
        """The claimed task, its id and enqueue time filled in; None when it is unreadable."""
        try:
            data, _ = read_regular(taken.path, self.max_file_bytes)
            task = envelope.parse_task_bytes(data)
        except (UnreadableFile, FieldError, OSError):
            return None
        mtime = os.lstat(taken.path).st_mtime
        task.setdefault("id", envelope.id_of_name(taken.name, mtime))
        task.setdefault("enqueued_at", mtime)
        return task

    def reap(self, now: float, now_mono: float) -> None:
        """Delete dead workers' files once they own no claim; fold their counts."""
        busy = busy_worker_ids(self.root)
        reap_dead_workers(self.root, busy, now, self.orphans)
        if self.worker_leases is not None:
            reap_expired_workers(self.root, busy, self.worker_leases, now_mono)
        stale = stats.stale_files(self.root, now)
        stats.fold_dead(self.root, {w for w in stale if not is_alive(self.root, w)})


def busy_worker_ids(root: Path) -> set[str]:
    """Workers that own a claim (or a committed claim) in any queue."""
    owners = set()
    for queue in existing_queues(root):
        for entry in list_names(root / queue / "processing"):
            parts = split_processing(entry.removeprefix("."))
            if parts:
                owners.add(parts[1])
    return owners


def hand_back(taken: Claim, dead: str) -> None:
    """After a failed recovery (a full disk), rename the taken-over claim back to its dead
    owner's name, so the next round tries again (under this worker's name it would wait for
    this worker's death). Unless the task was sent back before the error (e.g. its event could
    not be written): then the claim is dropped, or the task would run twice."""
    if is_elsewhere(taken):
        log.warning("recovered %s, but its event may be missing", taken.name)
        taken.path.unlink(missing_ok=True)
        return
    back = Claim(taken.dirs, taken.name, dead, committed=taken.committed)
    try:
        os.rename(taken.path, back.path)
    except OSError as exc:
        log.error("cannot hand %s back for recovery: %s", taken.name, exc)


def is_elsewhere(taken: Claim) -> bool:
    """Whether the claimed task is also in incoming/ or claimed by another name.

    RACE: a worker may claim it (and finish it) between the write to incoming/ and this look;
    once finished, the next recovery round finds its outcome and drops the claim.
    """
    if os.path.lexists(taken.dirs.incoming / taken.name):
        return True
    prefix = taken.name + "@"
    own = taken.path.name
    return any(
        entry.removeprefix(".").startswith(prefix) and entry != own
        for entry in list_names(taken.dirs.processing)
    )
