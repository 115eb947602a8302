"""What a task's end sets off: its follow-ups (see followup) and its batch's progress (see
batches). `conclude` calls `on_end` for every end, and `finish.recover` calls it again for an
end whose worker died after writing the outcome: each step is idempotent (O_EXCL markers and
derived ids), so a replay adds nothing that is already there.
"""

from __future__ import annotations

from pathlib import Path

from spool.envelope import TaskDict
from spool.faults import crash_point
from spool.workflows import batches, followup

ENDS = frozenset({"done", "failed", "cancelled"})


def on_end(root: Path, task: TaskDict | None, state: str, *, durable: bool) -> None:
    """Send the follow-ups of a task that ended in `state`. Raises: OSError."""
    if task is None or state not in ENDS or not has_workflow(task):
        return
    crash_point("before-follow-ups")
    followup.after_end(root, task, state, durable=durable)
    if "batch" in task:
        batches.member_ended(root, task, state, durable=durable)
    crash_point("after-follow-ups")


def has_workflow(task: TaskDict) -> bool:
    return "then" in task or "then_on_failure" in task or "batch" in task
