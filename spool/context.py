"""What a handler can know and say while it runs (`import spool`): its context
(`spool.current()`), its progress (`spool.progress(...)`), and the end it asks for (`raise
spool.Retry(...)`, `raise spool.Fail(...)`).

One style: a handler asks for its context with `spool.current()`; no parameter is injected, so
a handler's signature is its arguments only (producers check them, see signature). The context
lives in a ContextVar the handler process sets for the attempt (see execute.run_handler), and
eager mode (see app) sets it the same way; a thread the handler starts has none.

Progress is a small JSON record, written atomically beside the task (see layout: attempts/<id>/
progress.json) at most once per PROGRESS_EVERY_SECONDS whatever the handler calls; the last
value travels back with the attempt's reply and stays in the task file.

A handler asks for an end by raising: `Retry` sends the task to delayed/ for `after` seconds
(the backoff when None); it spends a retry unless `count=False` (a release), and releases are
bounded too: after MAX_RELEASES of them a release spends a retry like any other. `Fail` sends
it to failed/ at once, without retries. The worker decides (see decision.decide) and writes the
decision with its reason in the attempt's history entry and the completion event.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from pathlib import Path

from spool.envelope import JSON, TaskDict
from spool.errors import SpoolError
from spool.fsio import write_atomic
from spool.layout import CANCEL_FILE, PROGRESS_FILE, ensure_dir

PROGRESS_EVERY_SECONDS = 0.25
MAX_RELEASES = 100  # Retry(count=False) that do not spend a retry, per task
MESSAGE_MAX = 500  # characters of a progress message kept
# the fields spool itself reads or writes; the others are the producer's (Context.extra)
SPOOL_FIELDS = frozenset(
    {
        "task",
        "args",
        "kwargs",
        "id",
        "queue",
        "priority",
        "delay",
        "not_before",
        "enqueued_at",
        "timeout",
        "max_retries",
        "max_lost",
        "attempts",
        "lost",
        "released",
        "history",
        "retry_at",
        "retried_at",
        "unique_key",
        "progress",
        "result",
        "result_is_repr",
        "error",
        "started_at",
        "finished_at",
        "worker",
        "cancelled_at",
        "retry_on",
        "no_retry_on",
        *("then", "then_on_failure", "pass_result", "parent"),  # (see workflows.followup)
        *("batch", "batch_index", "batch_callback"),  # (see workflows.batches)
        *("rate", "rate_key", "concurrency", "concurrency_key"),  # (see workflows.rates, caps)
    }
)


class NoContext(SpoolError):
    """spool.current() or spool.progress() was called outside a handler's attempt."""

    def __init__(self) -> None:
        super().__init__(
            "no task is running here: spool.current() and spool.progress() work only inside "
            "a handler run by a worker (or by an eager Spool), in its own thread"
        )


class Retry(Exception):
    """Raised by a handler: run the task again `after` seconds from now (the backoff when None);
    `count=False` does not spend a retry (bounded: see MAX_RELEASES)."""

    def __init__(self, after: float | None = None, reason: str = "", count: bool = True) -> None:
        if after is not None and not (math.isfinite(after) and after >= 0):
            raise ValueError(f"Retry(after=...) must be a number of seconds >= 0, not {after!r}")
        super().__init__(reason or "retry asked by the handler")
        self.after, self.reason, self.count = after, reason, count

    def asked(self) -> dict[str, JSON]:
        return {"action": "retry", "after": self.after, "reason": self.reason, "count": self.count}


class Fail(Exception):
    """Raised by a handler: the task fails for good now, without retries."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "failed by the handler")
        self.reason = reason

    def asked(self) -> dict[str, JSON]:
        return {"action": "fail", "reason": str(self)}


@dataclass(frozen=True)
class Context:
    """The running attempt as its handler sees it (`spool.current()`)."""

    id: str
    queue: str
    task: str
    attempt: int  # 1 for the first run; lost and released attempts count too
    max_retries: int
    retries_left: int  # failed attempts still allowed after this one
    enqueued_at: float | None
    deadline: float | None  # epoch seconds when the timeout stops this attempt (None: never)
    worker: str
    extra: Mapping[str, JSON] = field(default_factory=dict)  # the task file's other fields
    beside: str | None = None  # (the task's directory beside it; None in eager mode)
    tmp: str | None = None  # (the queue's tmp/, for atomic writes)

    def cancelled(self) -> bool:
        """Whether an operator asked to cancel this task (`spool cancel`): stop at a safe
        point; the worker stops the attempt within a second anyway."""
        return self.beside is not None and os.path.exists(os.path.join(self.beside, CANCEL_FILE))

    def to_json(self) -> dict[str, JSON]:
        return {k: v for k, v in self.__dict__.items() if k not in ("beside", "tmp")}


class Reporter:
    """One attempt's progress: the last value, written at most every PROGRESS_EVERY_SECONDS."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.last: dict[str, JSON] | None = None
        self.written_at = -math.inf  # (monotonic)
        self.writes = 0

    def report(self, done: float, total: float | None, message: str, now: float) -> None:
        value: dict[str, JSON] = {"done": done, "total": total, "message": message[:MESSAGE_MAX]}
        value["at"] = time.time()
        self.last = value
        if now - self.written_at < PROGRESS_EVERY_SECONDS:
            return
        self.written_at = now
        self.write(value)

    def write(self, value: dict[str, JSON]) -> None:
        beside, tmp = self.context.beside, self.context.tmp
        if beside is None or tmp is None:
            return
        try:
            ensure_dir(Path(beside))  # (group access, whatever the umask)
            data = json.dumps(value).encode()
            write_atomic(data, Path(tmp), Path(beside) / PROGRESS_FILE, durable=False)
            self.writes += 1
        except OSError:  # progress is a hint: a full disk must not fail the task
            pass


class Attempt:
    """The running attempt in the handler process: its fields as the worker sent them, made a
    Context and a Reporter only when the handler asks (a handler that does not pays nothing)."""

    __slots__ = ("built", "fields", "reporter")

    def __init__(self, fields: Mapping[str, JSON]) -> None:
        self.fields = fields
        self.built: Context | None = None
        self.reporter: Reporter | None = None

    @property
    def context(self) -> Context:
        if self.built is None:
            self.built = Context(**self.fields)
        return self.built

    def report(self, done: float, total: float | None, message: str, now: float) -> None:
        if self.reporter is None:
            self.reporter = Reporter(self.context)
        self.reporter.report(done, total, message, now)


CURRENT: ContextVar[Attempt | None] = ContextVar("spool_current_attempt", default=None)


def current() -> Context:
    """The running task's context. Raises: NoContext outside a handler's attempt."""
    attempt = CURRENT.get()
    if attempt is None:
        raise NoContext()
    return attempt.context


def progress(done: float, total: float | None = None, message: str = "") -> None:
    """Report the running task's progress (shown by `spool show`, `ls`, `top`, the dashboard).

    Cheap to call often: it is written at most a few times a second. Raises: NoContext,
    ValueError (not numbers).
    """
    attempt = CURRENT.get()
    if attempt is None:
        raise NoContext()
    if not is_real(done) or (total is not None and not is_real(total)):
        raise ValueError("spool.progress(done, total): done and total must be numbers")
    attempt.report(done, total, str(message), time.monotonic())


def is_real(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))  # type: ignore[arg-type,unused-ignore]
    )


def begin(fields: Mapping[str, JSON]) -> Token[Attempt | None]:
    """Make the attempt of `fields` (see context_fields) the current one: the handler process,
    or eager mode, before it calls a handler."""
    return CURRENT.set(Attempt(fields))


def end(token: Token[Attempt | None]) -> dict[str, JSON] | None:
    """Leave the attempt begun with `token`; return its last progress (None if none)."""
    attempt = CURRENT.get()
    CURRENT.reset(token)
    reporter = None if attempt is None else attempt.reporter
    if reporter is None:
        return None
    beside = reporter.context.beside
    if reporter.writes and beside is not None:
        with contextlib.suppress(OSError):  # (the last value goes into the task file)
            os.unlink(os.path.join(beside, PROGRESS_FILE))
    return reporter.last


def context_fields(
    task: TaskDict,
    queue: str,
    worker: str,
    max_retries: int,
    timeout: float,
    now: float,
    beside: str | None,
    tmp: str | None,
) -> dict[str, JSON]:
    """What the worker tells the handler process of the attempt it starts at `now`."""
    attempts = int(task.get("attempts", 0))
    spent = attempts - int(task.get("lost", 0)) - int(task.get("released", 0))
    return {
        "id": str(task["id"]),
        "queue": queue,
        "task": task["task"],
        "attempt": attempts + 1,
        "max_retries": max_retries,
        "retries_left": max(0, max_retries - spent),
        "enqueued_at": task.get("enqueued_at"),
        "deadline": now + timeout if math.isfinite(timeout) else None,
        "worker": worker,
        "extra": {k: v for k, v in task.items() if k not in SPOOL_FIELDS},
        "beside": beside,
        "tmp": tmp,
    }
