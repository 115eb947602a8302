"""Batched claims: a worker with a backlog hands its handler process several tasks at once.

When a worker claims a task while more wait ready in its queues, it claims up to `claim_batch`
of them (consecutive renames, in priority order: see Queues.claim_next) and sends them to its
handler process in one message (see execute.Executor.run_batch and child.serve); the outcomes
come back as each task ends and are recorded as one task's are (see recorder). A task of
higher priority that arrives meanwhile waits at most for the tasks already handed over. An
idle worker claims one task at a time, as without batches (its pick-up latency).

A batch is extended: as its last task starts, the worker takes in the tasks that arrived,
claims the next batch the same way and sends it after that one, so the handler process goes
from one task to the next without waiting for the worker (see Executor.hand_more). It does so
for EXTEND_SECONDS from the batch's first hand-over, and not once a reload, a rescan or a new
queue waits for the worker's loop (see Worker.may_extend): then the batch ends with its tasks,
and the worker looks at its spool (rescans, recovery, delayed tasks falling due) before it
claims again. An extension's tasks are to a stop, a timeout and a lost handler process what
the batch's own are.

Never in a batch: a task with a concurrency cap or a rate limit, or an `at_most_once` one (met
while gathering, it goes back to incoming/ and runs on its own, next or on another worker), and
every task in shared mode (each claim has a lease there, see spool.lease).

Claimed but not started: a stop signal, an outcome the disk refused, a batch still running
BATCH_SECONDS after its last hand-over (the worker takes them back from the handler process at
once, even while a task runs; the batch's first always runs: see child.Inbox), or the timeout
or cancel of a task before them, or a lost handler process puts the batch's tasks that had not
started back in incoming/ unchanged (no attempt counted).

A worker killed in the middle (SIGKILL) leaves its claims. Its list of what it handed over
(`.workers/<id>.batch`: the claim whose outcome was still to be written, then the tasks it is
about to send to its handler process, in order, after the one running when it extends a batch;
written before each send, of a batch, an extension or a lone task, with no sync) tells recovery
which may have run. The worker writes each outcome as soon as it has it, so of the listed
claims still there the first is the one that was running: it counts as lost. The others, and
every claim the list does not name (claimed after it was written: a batch being gathered, a
task waiting for its seat or rate slot), never started and go back unchanged. Without a list
every claim counts as lost: none written yet, the disk refused it, or an outcome waits for the
disk (its claim, still there, would be taken for the one running: the worker removes the list,
see Recorder.keep_unwritten). (In the instant between a task's end and its outcome's first
step, the next one already runs and would go back uncounted; and the handler process may run
ahead of a worker slow to write outcomes: such a task runs again, at least once as always, with
no attempt counted.) Shared mode keeps no list: its recovery goes by each claim's lease
(spool.lease).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from spool.claim import Claim
from spool.envelope import TaskDict
from spool.layout import FILE_MODE, processing_name, workers_dir
from spool.workers import BATCH_SUFFIX

MAYBE_STARTED = 1  # listed claims still there that count as lost (see the module docstring)
BATCH_SECONDS = 1.0  # a batch still running after this hands back what has not started
EXTEND_SECONDS = 1.0  # a batch takes more only this long: then the worker looks at its spool
LIST_BYTES = 1024 * 1024  # a batch's list is far smaller


@dataclass
class Sizing:
    """How many tasks the next batch may take, up to `most`: after a batch cut short by
    BATCH_SECONDS (slow tasks) as many as had started in time; after a whole one, twice as
    many. (So slow tasks are not claimed and handed back over and over.)"""

    most: int
    size: int = 0

    def __post_init__(self) -> None:
        self.size = self.most

    def after(self, ran: int, of: int) -> None:
        self.size = min(self.most, self.size * 2) if ran >= of else max(1, ran)


def gather(
    first: tuple[Claim, TaskDict],
    ready: Callable[[Claim], TaskDict | None],
    claim_more: Callable[[], Claim | None],
    batchable: Callable[[Claim, TaskDict], bool],
    hand_back: Callable[[Claim], None],
    size: int,
    alone: bool = True,
) -> list[tuple[Claim, TaskDict]]:
    """Claim up to `size` runnable tasks, `first` (claimed and read) first: `ready` reads a
    claim (None: it was set aside or put off, see claimed.Aside), `claim_more` claims the next
    best one (None: none is ready), `batchable` says whether a task may share a message. A
    task that may not runs alone: met first, it is the whole batch (unless not `alone`: a
    running batch's next one); otherwise it goes back (`hand_back`), to run next or on another
    worker rather than wait claimed behind the batch."""
    if not batchable(*first):
        if alone:
            return [first]
        hand_back(first[0])
        return []
    batch = [first]
    while len(batch) < size and (taken := claim_more()) is not None:
        task = ready(taken)
        if task is None:
            continue
        if not batchable(taken, task):
            hand_back(taken)
            break
        batch.append((taken, task))
    return batch


class HandOverList:
    """The list of what the worker handed over (see the module docstring), one per worker:
    rewritten in place with one write per send (padded over a longer list before it; no
    truncation, no sync). A disk that refuses it has it removed: a stale list would make claims
    that ran look unstarted; without one, recovery counts every claim as lost.

    Not `kept` in shared mode: recovery there goes by each claim's lease and never reads it
    (and a write per task to a network mount costs a round trip)."""

    def __init__(self, root: Path, worker_id: str, kept: bool = True) -> None:
        self.path = list_path(root, worker_id)
        self.kept = kept
        self.fd: int | None = None
        self.size = 0  # the longest list written

    def write(self, claims: Iterable[Claim]) -> None:
        if not self.kept:
            return
        text = "".join(f"{taken.dirs.name}/{taken.name}\n" for taken in claims).encode()
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
                os.fchmod(self.fd, FILE_MODE)  # (the umask must not narrow group access)
            padded = text + b"\n" * (self.size - len(text))
            # CRASH: one write; a kill never leaves half of it
            if os.pwrite(self.fd, padded, 0) != len(padded):
                raise OSError("short write")
        except OSError:
            self.drop()
            return
        self.size = max(self.size, len(text))

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = None

    def drop(self) -> None:
        """Close and remove it (the worker stops, or the disk refused it)."""
        self.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def list_path(root: Path, worker_id: str) -> Path:
    return workers_dir(root) / f"{worker_id}{BATCH_SUFFIX}"


def maybe_started(root: Path, worker_id: str) -> set[tuple[str, str]] | None:
    """(queue, name) of the dead worker's claims that may have started (see the module
    docstring): its others never did. None when it left no list (every claim may have).

    Call it before any of the worker's claims is taken over: it looks for them by its name.
    """
    try:
        with open(list_path(root, worker_id), "rb") as handle:
            text = handle.read(LIST_BYTES).decode(errors="replace")
    except OSError:
        return None
    still_there = []
    for line in text.splitlines():  # (empty lines: the padding)
        queue, _, name = line.partition("/")
        claim = root / queue / "processing" / processing_name(name, worker_id)
        if queue and name and os.path.lexists(claim):
            still_there.append((queue, name))
    return set(still_there[:MAYBE_STARTED])
