"""Steps and chains on the producer's side: `task.s(...)` is one task with its arguments, not
yet enqueued; `app.chain(a.s(...), b.s(...))` nests them into one task file whose `then` holds
the next step (and so on), so the rest of the chain travels with the first task.

A step does not see its parent's result unless `.with_result()` asks for it: then the parent's
result is put first in its args (see workflows.followup). The ids of the later steps are derived
from the first one's (see envelope.follow_up_id), so they are known at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from spool.envelope import TaskDict, follow_up_id
from spool.errors import InvalidTask

STEP_OPTIONS = ("queue", "priority", "delay", "not_before", "max_retries", "timeout", "max_lost")


@dataclass(frozen=True)
class Step:
    """One task with its arguments and options, to be enqueued later (in a chain or batch)."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # queue, priority, delay, ...
    pass_result: bool = False

    def with_result(self) -> Step:
        """This step, receiving its parent's result as its first argument."""
        return replace(self, pass_result=True)

    def set(self, **options: Any) -> Step:
        """This step with more options (see STEP_OPTIONS). Raises: InvalidTask."""
        unknown = sorted(set(options) - set(STEP_OPTIONS))
        if unknown:
            raise InvalidTask(f"unknown step option {unknown[0]!r}")
        return replace(self, options={**self.options, **options})

    def to_task(self) -> TaskDict:
        """The step as a task object (as in a task file or a `then` list)."""
        task: TaskDict = {"task": self.name, "args": list(self.args), "kwargs": dict(self.kwargs)}
        task.update((k, v) for k, v in self.options.items() if v is not None)
        if self.pass_result:
            task["pass_result"] = True
        return task


def chain_task(steps: Sequence[Step], on_failure: Step | None = None) -> TaskDict:
    """The first step's task object, the others nested in `then`; `on_failure`, if given, is
    every step's `then_on_failure`. Raises: InvalidTask."""
    if not steps:
        raise InvalidTask("a chain needs at least one step")
    task: TaskDict | None = None
    for step in reversed(steps):
        current = step.to_task()
        if task is not None:
            current["then"] = [task]
        if on_failure is not None:
            current["then_on_failure"] = [on_failure.to_task()]
        task = current
    assert task is not None
    return task


def chain_ids(first_id: str, length: int) -> list[str]:
    """The ids a chain of `length` steps has, from its first step's id."""
    ids = [first_id]
    while len(ids) < length:
        ids.append(follow_up_id(ids[-1], "then", 1))
    return ids
