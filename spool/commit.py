"""The committer: a worker's outcomes made durable a group at a time, and only then seen.

The recorder stages each ended attempt's outcome in tmp/ without a sync (see
finish.stage_verdict) and hands it here. A background thread gathers what was staged for up to
`max_delay_seconds`, syncs the filesystem once for the group, and then publishes each outcome
in the order they ended: renames it into done/, failed/ or delayed/ and concludes it (event,
counter, unique key, follow-ups; see finish.publish_verdict). So nothing is reported done (a
wait, an event, a follow-up) before its outcome is durable, and the worker never waits for a
disk flush between two tasks. A worker with nothing to run next hurries the committer (no
gathering): an idle worker's outcome is seen one sync after its handler returned.

A group's claims are dropped one round later, after the next sync made its publishing (the
renames, events and follow-ups) durable too. Until then a crash leaves the claim, and recovery
finds the outcome, staged or published, and finishes what is missing (see
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
from spool.finish import Verdict, publish_verdict, staged_path
from spool.fsio import sync_filesystem
from spool.stats import WorkerStats

log = logging.getLogger(__name__)


@dataclass
class Staged:
    """An ended attempt whose outcome is staged in tmp/, its claim hidden (see Claim.hide)."""

    taken: Claim
    outcome: Outcome
    verdict: Verdict


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
        with self.lock:
            self.staged.append(staged)
            self.has_work.set()
        if self.thread is None:
            self.flush_all()

    def hurry(self) -> None:
        """The worker has nothing to run next: publish what is staged without gathering more."""
        if self.staged:
            self.hurried.set()

    def run(self) -> None:
        complaint = Complaint()
        while not self.stopping.is_set():
            self.has_work.wait()
            self.hurried.wait(self.max_delay_seconds)  # let a group gather, unless hurried
            self.hurried.clear()
            try:
                self.flush()
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
        """How many outcomes are staged and not published yet."""
        with self.lock:
            return len(self.staged)

    def flush(self) -> None:
        """One round: sync; drop the claims published by the round before; publish what was
        staged. Raises: OSError (what is left waits for the next round)."""
        with self.lock:
            group, self.staged = self.staged, []
            self.has_work.clear()
        if not group and not self.published:
            return
        handled = 0
        try:
            crash_point("before-commit-sync")
            sync_filesystem(self.root)  # CRASH: the group's outcomes durable, none seen yet
            self.drop_published()
            for staged in group:
                self.publish(staged)
                handled += 1
            if group:
                crash_point("after-publish")
        finally:
            with self.lock:
                self.staged[:0] = group[handled:]
                if self.staged or self.published:
                    self.has_work.set()  # (the next round drops these claims)

    def publish(self, staged: Staged) -> None:
        taken, verdict = staged.taken, staged.verdict
        path = staged_path(taken.dirs, taken.name, taken.worker_id, verdict.state)
        if self.fenced and not verdict.written and not os.path.lexists(taken.path):
            # RACE: a recoverer took the claim meanwhile; its outcome stands (see recovery)
            log.warning("lost the claim of %s to recovery: this outcome is dropped", taken.name)
            path.unlink(missing_ok=True)
            return
        try:
            publish_verdict(taken, staged.outcome, verdict, self.outbox, self.counts)
        except FileNotFoundError:
            if verdict.written or os.path.lexists(path):
                raise  # (its destination directory is missing: tried again)
            # RACE: a recoverer took the claim after the check above and published it
            log.warning("lost the claim of %s to recovery: it published the outcome", taken.name)
            return
        self.published.append(taken.path)

    def drop_published(self) -> None:
        while self.published:
            self.published[-1].unlink(missing_ok=True)
            self.published.pop()

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
