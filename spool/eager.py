"""Eager mode: a task run at once in the producer's process, for tests and scripts.

`Spool(eager=True)` hands every enqueued task to an EagerRunner instead of the spool: the
handler runs once (no retries), with the same context fields a worker gives it (see
spool.context), and its result or error is kept in memory under the task's id; nothing is
written. A task's follow-ups and a batch's callbacks then run at once too, with the ids a
worker would give them (see envelope.follow_up_id), so `wait` finds them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from spool import context
from spool.config import Settings
from spool.context import context_fields
from spool.envelope import follow_up_id
from spool.errors import TaskNotFound, UnknownTask, error_dict
from spool.registry import Registry, first
from spool.workflows import batches


@dataclass
class EagerRunner:
    """Runs the tasks a `Spool` registered, at once; `results` holds each one's outcome by
    id: {"result": ...} or {"error": ...}, with its last "progress" if it reported any."""

    settings: Settings
    registry: Registry
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def run(self, task: dict[str, Any]) -> str:
        handle = self.registry.get(task["task"])
        if handle is None:
            raise UnknownTask(task["task"], "not registered with this Spool (eager mode)")
        task_id = str(task.get("id") or f"eager-{len(self.results) + 1}")
        task["id"] = task_id
        s = self.settings
        max_retries = first(task.get("max_retries"), handle.options.max_retries, s.max_retries)
        timeout = first(task.get("timeout"), handle.options.timeout, s.timeout_seconds)
        fields = context_fields(
            task,
            handle.options.queue,
            "eager",
            int(max_retries),
            float(timeout),
            time.time(),
            beside=None,
            tmp=None,
        )
        fields["retries_left"] = 0  # (eager mode runs a task once)
        token = context.begin(fields)
        try:
            result = handle.fn(*task.get("args", []), **task.get("kwargs", {}))
        except Exception as exc:
            self.results[task_id] = {"error": error_dict(type(exc).__name__, str(exc))}
        else:
            self.results[task_id] = {"result": result}
        finally:
            progress = context.end(token)
        if progress is not None:
            self.results[task_id]["progress"] = progress
        outcome = self.results[task_id]
        if "result" in outcome:
            self.run_follow_ups(task.get("then"), task_id, "then", outcome["result"])
        else:
            specs = task.get("then_on_failure")
            self.run_follow_ups(specs, task_id, "fail", outcome["error"])
        return task_id

    def run_batch(
        self, members: list[dict[str, Any]], callbacks: dict[str, list[Any]], batch_id: str | None
    ) -> tuple[str, list[str]]:
        """Run a batch's members, then its callbacks, at once; return its id and its members'."""
        made = batch_id or f"eager-batch-{len(self.results) + 1}"
        ids = [self.run(dict(member)) for member in members]
        failed = sum(1 for i in ids if "error" in self.results[i])
        total = len(ids)
        summary = {"id": made, "total": total, "done": total - failed, "failed": failed}
        summary.update(pending=0, complete=True)
        for key, kind in batches.CALLBACKS:
            if key in ("finally", "then" if failed == 0 else "on_failure"):
                self.run_follow_ups(callbacks.get(key), made, kind, summary)
        return made, ids

    def run_follow_ups(self, specs: Any, cause: str, kind: str, value: Any) -> None:
        """Run follow-ups at once, as a worker would enqueue them."""
        for number, spec in enumerate(specs if isinstance(specs, list) else [], 1):
            follow = {k: v for k, v in spec.items() if k != "pass_result"}
            if spec.get("pass_result") is True:
                follow["args"] = [value, *follow.get("args", [])]
            self.run({**follow, "id": follow_up_id(cause, kind, number)})

    def info(self, task_id: str) -> dict[str, Any]:
        """A task run here, as `show` would give it (state done or failed, with its outcome).
        Raises: TaskNotFound."""
        outcome = self.results.get(task_id)
        if outcome is None:
            raise TaskNotFound(task_id)
        return {"state": "failed" if "error" in outcome else "done", **outcome}
