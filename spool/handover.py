"""Batched claims: a worker with a backlog hands its handler process several tasks at once.

When a worker claims a task while more wait ready in its queues, it claims up to `claim_batch`
of them (consecutive renames, in priority order: see Queues.claim_next) and sends them to its
handler process in one message (see execute.Executor.run_batch and child.serve); the outcomes
come back as each task ends and are recorded as one task's are (see recorder). A task of
higher priority that arrives meanwhile waits at most for the tasks already handed over. An
idle worker claims one task at a time, as without batches (its pick-up latency).

Never in a batch: a task with a concurrency cap or a rate limit (it ends the gathering and
runs on its own right after the batch), and every task in shared mode (each claim has a lease
there, see spool.lease).

Claimed but not started: a stop signal, the timeout or cancel of a task before them, or a lost
handler process puts the batch's tasks that had not started back in incoming/ unchanged (no
attempt counted). A worker killed in the middle (SIGKILL) leaves its claims: the batch's list
(`.workers/<id>.batch`: the claim whose outcome was still to be written, then the batch, in
order; written as the batch is sent, no sync) tells recovery which came first. Of the listed
claims still there, the first two count as lost (one may have ended with its outcome unwritten,
one may have been running); the others go back unchanged. (The handler process may run ahead of
the worker's records: such a task runs again, at least once as always, with no attempt counted.)
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

MAYBE_STARTED = 2  # listed claims still there that count as lost (see the module docstring)
LIST_BYTES = 1024 * 1024  # a batch's list is far smaller


@dataclass
class Gathered:
    """Claimed tasks to run: `batch` in one message, then `alone` (if any) on its own."""

    batch: list[tuple[Claim, TaskDict]]
    alone: tuple[Claim, TaskDict] | None = None


def gather(
    first: Claim,
    ready: Callable[[Claim], TaskDict | None],
    claim_more: Callable[[], Claim | None],
    batchable: Callable[[Claim, TaskDict], bool],
    size: int,
) -> Gathered:
    """Claim up to `size` runnable tasks, `first` first: `ready` reads a claim (None: it was
    set aside or put off, see claimed.Aside), `claim_more` claims the next best one (None: none
    is ready), `batchable` says whether a task may share a message."""
    batch: list[tuple[Claim, TaskDict]] = []
    taken: Claim | None = first
    while taken is not None:
        task = ready(taken)
        if task is not None:
            if not batchable(taken, task):
                return Gathered(batch, (taken, task))
            batch.append((taken, task))
            if len(batch) >= size:
                break
        taken = claim_more()
    return Gathered(batch)


def list_path(root: Path, worker_id: str) -> Path:
    return workers_dir(root) / f"{worker_id}{BATCH_SUFFIX}"


def write_list(root: Path, worker_id: str, claims: Iterable[Claim]) -> None:
    """Write the list of a batch being sent (see the module docstring); a disk that refuses
    leaves it out (recovery then counts every claim as lost, as without batches)."""
    text = "".join(f"{taken.dirs.name}/{taken.name}\n" for taken in claims)
    path = list_path(root, worker_id)
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # (the umask must not narrow group access)
            os.write(fd, text.encode())  # CRASH: one write; a kill never leaves half of it
        finally:
            os.close(fd)


def not_started(root: Path, worker_id: str) -> set[tuple[str, str]]:
    """(queue, name) of a dead worker's claims that never started (see the module docstring).

    Call it before any of the worker's claims is taken over: it looks for them by its name.
    """
    try:
        with open(list_path(root, worker_id), "rb") as handle:
            text = handle.read(LIST_BYTES).decode(errors="replace")
    except OSError:
        return set()
    still_there = []
    for line in text.splitlines():
        queue, _, name = line.partition("/")
        claim = root / queue / "processing" / processing_name(name, worker_id)
        if queue and name and os.path.lexists(claim):
            still_there.append((queue, name))
    return set(still_there[MAYBE_STARTED:])


def drop_list(root: Path, worker_id: str) -> None:
    with contextlib.suppress(OSError):
        list_path(root, worker_id).unlink(missing_ok=True)
