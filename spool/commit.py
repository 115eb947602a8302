"""The committer: a worker's outcomes made durable a group at a time, and only then seen.

The recorder stages each ended attempt's outcome in tmp/ without a sync (see
finish.stage_verdict) and hands it here. A background thread gathers what was staged for up to
`max_delay_seconds` and syncs the filesystem once for the group. Only then is each outcome
published: renamed into done/, failed/ or delayed/ and concluded (event, counter, unique key,
follow-ups; see finish.publish_verdict). So nothing is reported done (a wait, an event, a
follow-up) before its outcome is durable, and the worker never waits for a disk flush between
two tasks.

Who publishes: the worker's own thread takes the durable outcomes between two attempts
(`publish_durable`), so the committer thread, which mostly waits in system calls, seldom
competes with it for the interpreter; what the worker leaves for a whole round (it runs a long
task, or sleeps) the committer publishes itself, and a worker with nothing to run next hurries
it: an idle worker's outcome is seen one sync after its handler returned.

A claim is dropped at the first sync after its outcome was published, which makes the
publishing (the rename, events and follow-ups) durable too. Until then a crash leaves the claim,
and recovery finds the outcome, staged or published, and finishes what is missing (see
finish.written_outcome): a power loss never loses a task, and at worst it runs again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from spool.claim import Claim
from spool.events import Outbox
from spool.execute import Outcome
from spool.faults import Complaint, crash_point, describe, is_disk_fault
from spool.finish import Verdict, publish_verdict
from spool.fsio import sync_filesystem
from spool.stats import WorkerStats

log = logging.getLogger(__name__)


@dataclass
class Staged:
    """An ended attempt whose outcome is staged in tmp/, its claim hidden (see Claim.hide)."""

    taken: Claim
    outcome: Outcome
    verdict: Verdict
    path: Path  # the staged file (see finish.stage_verdict)


class Committer:
    """Syncs, publishes and drops claims for one worker, in a background thread.

    `fenced` (shared mode): a claim a recoverer took while its outcome waited (this worker's
    lease ran out) drops the staged outcome instead of publishing it; the recoverer's stands.
    """

    def __init__(
        self,
        root: Path,
        outbox: Outbox | None = None,
        counts: WorkerStats | None = None,
        *,
        fenced: bool = False,
        max_delay_seconds: float = 0.05,
    ) -> None:
        self.root, self.outbox, self.counts = root, outbox, counts
        self.fenced, self.max_delay_seconds = fenced, max_delay_seconds
        self.staged: list[Staged] = []  # waiting for a sync (added by the worker's thread)
        self.durable: list[Staged] = []  # synced, waiting to be published
        self.published: list[Path] = []  # claims whose outcome is published: the next sync's
        self.lock = threading.Lock()
        self.has_work = threading.Event()
        self.hurried = threading.Event()  # the worker is idle: sync what is staged now
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.refused: str | None = None  # why the last round failed; None once one succeeds
        self.retry_seconds = 1.0

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="spool-committer", daemon=True)
        self.thread.start()

    def add(self, staged: Staged) -> None:
        """Take a staged outcome for the next round; with no thread (not started, or closed)
        commit it at once."""
        with self.lock:
            self.staged.append(staged)
            self.has_work.set()
        if self.thread is None:
            self.flush_all()

    def hurry(self) -> None:
        """The worker has nothing to run next: sync and publish what is staged without waiting
        for more (and without waiting for the worker to publish it)."""
        if self.staged or self.durable:
            self.hurried.set()

    def run(self) -> None:
        complaint = Complaint()
        while not self.stopping.is_set():
            self.has_work.wait()
            hurried = self.hurried.wait(self.max_delay_seconds)  # let a group gather
            self.hurried.clear()
            try:
                self.flush(publish_now=hurried or self.stopping.is_set())
            except OSError as exc:  # a full or failing disk must not end the thread
                self.refused = describe(exc) if is_disk_fault(exc) else str(exc)
                if complaint.due(time.time()):
                    log.error(
                        "cannot record the outcome of %d finished task(s): %s; they are kept "
                        "and written once the disk takes them (no new claims meanwhile)",
                        self.waiting(),
                        self.refused,
                    )
                self.stopping.wait(self.retry_seconds)
                continue
            self.refused = None
            if complaint.clear():
                log.info("the disk takes writes again: the waiting outcomes are written")

    def waiting(self) -> int:
        """How many outcomes are staged or durable and not published yet."""
        with self.lock:
            return len(self.staged) + len(self.durable)

    def flush(self, publish_now: bool = True) -> None:
        """One round: publish what the worker left durable for a whole round; sync; drop the
        claims published before the sync; the group staged before it is durable now, published
        here if `publish_now`, else by the worker. Raises: OSError (the rest waits)."""
        self.publish_all(self.take_durable())
        with self.lock:
            group, self.staged = self.staged, []
            synced, self.published = self.published, []
            self.has_work.clear()
        if not group and not synced:
            return
        try:
            crash_point("before-commit-sync")
            sync_filesystem(self.root)  # CRASH: the group's outcomes durable, none seen yet
        except BaseException:
            with self.lock:
                self.staged[:0] = group
                self.published[:0] = synced
                self.has_work.set()
            raise
        with self.lock:
            self.durable.extend(group)
            if self.durable or self.staged or self.published:
                self.has_work.set()  # (the next round publishes or drops these)
        self.drop(synced)
        if publish_now:
            self.publish_all(self.take_durable())

    def drop(self, synced: list[Path]) -> None:
        """Unlink the claims whose published outcome the last sync made durable. Raises:
        OSError (the rest is dropped after the next sync)."""
        for i, claim in enumerate(synced):
            try:
                claim.unlink(missing_ok=True)
            except OSError:
                with self.lock:
                    self.published[:0] = synced[i:]
                    self.has_work.set()
                raise

    def take_durable(self) -> list[Staged]:
        """The outcomes synced and not published yet, for the caller to publish (in order)."""
        if not self.durable:
            return []
        with self.lock:
            durable, self.durable = self.durable, []
        return durable

    def publish_all(self, durable: list[Staged]) -> None:
        """Publish outcomes taken from take_durable. Raises: OSError (the rest goes back)."""
        if not durable:
            return
        done = 0
        try:
            for staged in durable:
                self.publish(staged)
                done += 1
            crash_point("after-publish")
        finally:
            with self.lock:
                self.durable[:0] = durable[done:]
                self.has_work.set()  # (the next round drops the claims, or tries again)

    def publish(self, staged: Staged) -> None:
        taken, verdict = staged.taken, staged.verdict
        path = staged.path
        if self.fenced and not verdict.written and not os.path.lexists(taken.path):
            # RACE: a recoverer took the claim meanwhile; its outcome stands (see recovery)
            log.warning("lost the claim of %s to recovery: this outcome is dropped", taken.name)
            path.unlink(missing_ok=True)
            return
        try:
            publish_verdict(path, taken, staged.outcome, verdict, self.outbox, self.counts)
        except FileNotFoundError:
            if verdict.written or os.path.lexists(path):
                raise  # (its destination directory is missing: tried again)
            # RACE: a recoverer took the claim after the check above and published it
            log.warning("lost the claim of %s to recovery: it published the outcome", taken.name)
            return
        with self.lock:
            self.published.append(taken.path)

    def flush_all(self) -> None:
        """Two rounds: publish what is staged, then drop its claims. Raises: OSError."""
        self.flush()
        self.flush()

    def close(self) -> None:
        """Commit what is staged and stop the thread; a disk that refuses is logged (recovery
        finds the staged outcomes and drops the claims left behind)."""
        self.stopping.set()
        self.has_work.set()
        self.hurried.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            self.thread = None
        try:
            self.flush_all()
        except OSError as exc:
            log.error("cannot commit finished tasks before stopping: %s", exc)
