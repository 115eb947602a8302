"""A claimed file, read: the task to run, or why it is none.

Read no-follow and size-limited (see fsio.read_regular), then parsed and validated as a task
file (see envelope). A file that is none is rejected with the reason (see conclude.keep_rejected);
one that is not JSON yet may still be being written in place, and is read again later (see
settle); a task this worker's code does not register may be known to other workers (a deploy
under way: see manifest.unknown_fate). Deciding is kept apart from acting (the worker acts).
"""

from __future__ import annotations

from dataclasses import dataclass

from spool import envelope
from spool.claim import Claim
from spool.envelope import FieldError, NotJSON, TaskDict
from spool.fsio import UnreadableFile, read_regular
from spool.settle import Settling
from spool.taskcode import TaskCode


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
