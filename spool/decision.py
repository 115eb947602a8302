"""The decision on an attempt: what it makes of its task (state and content); nothing is written.

The state is done, retry, lost, failed or cancelled (a cancel seen while it ran); the content
is the task file's next version, with the attempt in `attempts` and, unless it was done, in its
`history`. Writing it is finish's (see finish.verdict_of).

A lost attempt (the worker or the handler process died) is not a failure of the task: it counts
in `attempts` and in `lost`, against `max_lost` (not `max_retries`); at the `max_lost`-th loss,
or at the first for an `at_most_once` task, the task goes to failed/ as WorkerLost.

A failed attempt is decided once, by `decide`: what the handler asked for (spool.Retry,
spool.Fail, see spool.context), the task's retry_on / no_retry_on, and the retries left make a
Decision (retry, release, or fail) whose action and reason go into the attempt's history entry
and so into the completion event. A cancel seen while the attempt ran ends it as cancelled.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from spool.context import MAX_RELEASES
from spool.envelope import JSON, TaskDict
from spool.execute import Outcome


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed attempt is tried again, and how often a lost one.

    A lost attempt (its worker or handler process died) counts in `attempts` and in `lost`,
    never against `max_retries`: the retries left are computed from the failed attempts only.
    """

    max_retries: int
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 3600.0
    jitter: bool = True
    max_lost: int = 3
    at_most_once: bool = False
    retry_on: tuple[str, ...] = ()  # exception type names: only these are retried (empty: all)
    no_retry_on: tuple[str, ...] = ()  # exception type names never retried

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.backoff_max_seconds, self.backoff_seconds * 2.0 ** min(attempt - 1, 60))
        if self.jitter:
            base *= float((rng or random).uniform(1.0, 1.25))
        return min(base, self.backoff_max_seconds)

    def exhausted(self, attempts: int, lost: int = 0) -> bool:
        """Whether `attempts`, `lost` of them lost, used up the retries (failed ones spend them)."""
        return attempts - lost > self.max_retries

    def lost_too_often(self, lost: int) -> bool:
        """Whether a task whose `lost`-th attempt was just lost must not run again."""
        return self.at_most_once or lost >= self.max_lost

    def refusal(self, kinds: tuple[str, ...]) -> str | None:
        """Why an error of these types (its type first, then its bases) is not retried, or None."""
        if not kinds:
            return None
        for name in self.no_retry_on:
            if any(names_type(name, kind) for kind in kinds):
                return f"{kinds[0]} is not retried (no_retry_on {name})"
        if self.retry_on and not any(
            names_type(name, kind) for name in self.retry_on for kind in kinds
        ):
            return f"{kinds[0]} is not retried (retry_on: {', '.join(self.retry_on)})"
        return None


def names_type(name: str, kind: str) -> bool:
    """Whether `name` (as a task option or a task file gives it) names the type `kind`
    (`module.Name`): in full, or by its last part (a file may say `MailboxFull`)."""
    return name == kind or kind.rsplit(".", 1)[-1] == name


@dataclass(frozen=True)
class Decision:
    """What a failed attempt makes of its task: "retry" (in `after` seconds), "release" (a
    retry that spends none, see spool.context.Retry), "fail" (for good) or "cancel"."""

    action: str
    reason: str
    after: float | None = None

    def to_json(self) -> dict[str, JSON]:
        entry: dict[str, JSON] = {"action": self.action, "reason": self.reason}
        if self.after is not None:
            entry["after"] = round(self.after, 6)
        return entry


def decide(task: TaskDict, outcome: Outcome, policy: RetryPolicy) -> Decision:
    """The one decision on a failed attempt (not lost, not cancelled) of `task` (as before it)."""
    attempt = int(task.get("attempts", 0)) + 1
    asked = outcome.asked or {}
    reason = str(asked.get("reason") or "")
    if asked.get("action") == "fail":
        return Decision("fail", f"the handler raised Fail: {reason}")
    kinds = outcome.kinds or (str(outcome.error.get("type", "")),)
    refused = None if asked.get("action") == "retry" else policy.refusal(kinds)
    if refused is not None:
        return Decision("fail", refused)
    after = asked.get("after")
    lost, released = int(task.get("lost", 0)), int(task.get("released", 0))
    if asked.get("action") == "retry" and asked.get("count") is False and released < MAX_RELEASES:
        wait = float(after) if after is not None else policy.delay(1)
        return Decision("release", reason or "the handler raised Retry(count=False)", wait)
    if policy.exhausted(attempt, lost + released):
        return Decision("fail", f"no retries left (max_retries {policy.max_retries})")
    spent = attempt - lost - released
    if asked.get("action") == "retry":
        wait = float(after) if after is not None else policy.delay(spent)
        return Decision("retry", reason or "the handler raised Retry", wait)
    return Decision("retry", f"backoff after failed attempt {spent}", policy.delay(spent))


def history_entry(
    attempt: int, worker: str, outcome: Outcome, decision: Decision | None = None
) -> dict[str, JSON]:
    entry: dict[str, JSON] = {
        "attempt": attempt,
        "worker": worker,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
        "error": outcome.error,
    }
    if outcome.lost:
        entry["lost"] = True
    if decision is not None:
        entry["decision"] = decision.to_json()
    return entry


def lose(task: TaskDict, worker: str, lost: Outcome, policy: RetryPolicy) -> tuple[str, TaskDict]:
    """The task after an attempt lost with its worker or handler process: ("lost", content) to
    run it again, or ("failed", content) after at_most_once or its `max_lost`-th loss.

    `lost.finished_at` is the moment the loss was seen (the decision's `now`).
    """
    attempt = int(task.get("attempts", 0)) + 1
    times_lost = int(task.get("lost", 0)) + 1
    updated: TaskDict = dict(task)
    updated.update(attempts=attempt, lost=times_lost)
    updated["history"] = [*task.get("history", []), history_entry(attempt, worker, lost)]
    if not policy.lost_too_often(times_lost):
        return "lost", updated
    if policy.at_most_once:
        why = "at_most_once: a lost attempt is not run again"
    else:
        why = f"{times_lost} attempts lost (max_lost {policy.max_lost})"
    error = {**lost.error, "message": f"{lost.error.get('message', '')}; {why}"}
    updated.update(error=error, finished_at=lost.finished_at, worker=worker)
    return "failed", updated


def after_attempt(
    task: TaskDict, outcome: Outcome, policy: RetryPolicy, worker: str
) -> tuple[str, TaskDict]:
    """What an attempt makes of the task: (state, content); state done, retry, lost, failed or
    cancelled (a cancel seen while it ran).

    A retry or a lost attempt carries `retry_at`: a lost one is due at once.
    """
    if outcome.lost:
        state, after_loss = lose(task, worker, outcome, policy)
        if state == "lost":
            after_loss["retry_at"] = outcome.finished_at
        else:
            after_loss["started_at"] = outcome.started_at
        return state, after_loss
    attempt = int(task.get("attempts", 0)) + 1
    final: TaskDict = dict(task)
    final.update(attempts=attempt, started_at=outcome.started_at, worker=worker)
    final["finished_at"] = outcome.finished_at
    if outcome.progress is not None:
        final["progress"] = outcome.progress
    if outcome.ok:
        final["result"] = outcome.result
        final.pop("error", None)
        return "done", final
    if outcome.cancelled:
        decision = Decision("cancel", "cancelled by an operator while it ran")
    else:
        decision = decide(task, outcome, policy)
    final["history"] = [*task.get("history", []), history_entry(attempt, worker, outcome, decision)]
    if decision.action in ("fail", "cancel"):
        final["error"] = outcome.error
        if decision.action == "cancel":
            final["cancelled_at"] = outcome.finished_at
            return "cancelled", final
        return "failed", final
    if decision.action == "release":
        final["released"] = int(task.get("released", 0)) + 1
    final["retry_at"] = outcome.finished_at + float(decision.after or 0.0)
    for key in ("finished_at", "started_at", "worker"):
        final.pop(key)
    return "retry", final
