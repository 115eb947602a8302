"""An attempt: what it takes to start one run of a claimed task's handler, and the run itself.

A claimed, due task starts only with a seat of its concurrency cap (see workflows.caps), held while
the attempt runs, and then its rate slot (see workflows.rates), perhaps after an in-memory wait that
a stop signal cuts short; without either it goes back to incoming/ unchanged, and that is no
attempt. An attempt sends the handler process (see execute) its request: the task's arguments,
the context fields a handler sees through `spool.current()`, the path of its log beside the
task; it hands the outcome to the recorder, or, stopped in the middle, puts the task back in
incoming/ unchanged. While it runs, its output goes to the worker's scratch file (see
layout.output_scratch), which the worker removes when it stops.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from spool import handover
from spool.claim import Claim
from spool.claimed import Aside
from spool.context import context_fields
from spool.decision import RetryPolicy
from spool.envelope import JSON, TaskDict
from spool.errors import ConfigError
from spool.execute import Outcome, Turn
from spool.faults import crash_point
from spool.layout import output_scratch
from spool.recorder import Pending, Recorder
from spool.stats import WorkerStats
from spool.taskcode import TaskCode
from spool.workflows import caps, rates

log = logging.getLogger("spool.worker")  # these lines are the worker's
NO_CAP = contextlib.nullcontext(True)  # (a task without a cap: no generator per attempt)


@dataclass
class Run:
    """An attempt being started: its claim and task, the retry policy, its log line's fields,
    the request for the handler process and its place in the run (see execute.Turn)."""

    taken: Claim
    task: TaskDict
    policy: RetryPolicy
    fields: str
    request: dict[str, JSON]
    turn: Turn


@dataclass
class Attempts:
    """One worker's attempts, one at a time: seats, rate slots, the handler's request, and the
    outcome handed to the recorder. `stopping` and `stopped_hard` are the worker's stop signals
    (the first ends a wait for a rate slot, the second also the running attempt); `handed`: the
    list of what it handed over (see spool.handover)."""

    root: Path
    worker_id: str
    code: TaskCode
    stats: WorkerStats
    aside: Aside
    recorder: Recorder
    stopping: threading.Event
    stopped_hard: Callable[[], bool]
    handed: handover.HandOverList

    def start(self) -> None:
        """Write the list of what was handed over, empty (before the first claim: see
        spool.handover)."""
        self.handed.write([])

    def attempt(self, taken: Claim, task: TaskDict) -> None:
        """Run the task's handler once and hand its outcome to the recorder."""
        run = self.prepare(taken, task)
        self.hand_over([taken])
        outcome = self.code.executor.run(
            run.request,
            run.turn.timeout,
            self.stopped_hard,
            self.recorder.record_pending,
            run.turn.beside,
        )
        self.ended(run, outcome)

    def attempt_batch(
        self, batch: list[tuple[Claim, TaskDict]], more: Callable[[], list[tuple[Claim, TaskDict]]]
    ) -> tuple[int, int]:
        """Run several claimed tasks through one message to the handler process, and those
        `more()` claims as the last one handed over starts, for EXTEND_SECONDS (see
        spool.handover); return how many started, and of how many: the others went back to
        incoming/ unchanged (a stop, an outcome the disk refused, or tasks that waited in the
        handler process past BATCH_SECONDS).

        Raises: ConfigError (the handler process cannot start: they all went back)."""
        run = BatchRun(self, more, time.monotonic())
        first = run.hand_over([self.prepare(taken, task) for taken, task in batch])
        try:
            ran = self.code.executor.run_batch(
                [request for request, _ in first],
                [turn for _, turn in first],
                self.stopped_hard,
                run.winding_down,
                run.ended,
                run.given_back,
                self.recorder.record_pending,
                run.extended,
            )
        except ConfigError:  # (raised before any started)
            run.given_back(0, run.handed)
            raise
        return ran, run.handed

    def hand_over(self, claims: list[Claim]) -> None:
        """List the claims about to be handed to the handler process, after the one whose
        outcome is still to be written (see spool.handover)."""
        crash_point("before-handing-over")
        pending = self.recorder.pending
        self.handed.write(([] if pending is None else [pending.taken]) + claims)

    def put_back(self, runs: list[Run]) -> None:
        """Tasks of a batch that never started: back to incoming/ unchanged (no attempt)."""
        for run in runs:
            self.aside.hand_back(run.taken)
        if runs:
            log.info("put back %d task(s) of a batch that had not started", len(runs))

    def prepare(self, taken: Claim, task: TaskDict) -> Run:
        """An attempt about to start: its request to the handler process (see Run)."""
        policy = self.code.policy_for(task)
        attempt = int(task.get("attempts", 0)) + 1
        fields = log_fields(taken, task, attempt)
        log.info("claimed %s", fields)
        timeout = self.code.timeout_for(task)
        dirs = taken.dirs
        beside = f"{dirs.attempts}/{task['id']}"  # (dirs.beside, as text: a hot path)
        request = {
            "task": task["task"],
            "args": task.get("args", []),
            "kwargs": task.get("kwargs", {}),
            "context": context_fields(
                task,
                dirs.name,
                self.worker_id,
                policy.max_retries,
                timeout,
                time.time(),
                beside,
                str(dirs.tmp),
            ),
            "log": f"{beside}/{attempt}.log",
        }
        if math.isfinite(timeout):  # (the handler process sets the deadline as it starts it)
            request["timeout"] = timeout
        turn = Turn(timeout, request["log"], beside)
        return Run(taken, task, policy, fields, request, turn)

    def ended(self, run: Run, outcome: Outcome) -> None:
        """Hand an ended attempt to the recorder, or put its task back (a stop cut it short)."""
        if outcome.interrupted:
            self.aside.release(run.taken)
            log.warning("released %s (stopped during the attempt)", run.fields)
            return
        self.recorder.defer(Pending(run.taken, run.task, outcome, run.policy, run.fields))

    def seated(
        self, taken: Claim, task: TaskDict, now_mono: float
    ) -> contextlib.AbstractContextManager[bool]:
        """Hold a seat of the task's concurrency cap while the block runs (see workflows.caps);
        yield False (the task went back to incoming/, no attempt) when every seat is taken."""
        cap = self.code.cap_for(task)
        return NO_CAP if cap is None else self.seat(taken, task, cap, now_mono)

    @contextmanager
    def seat(self, taken: Claim, task: TaskDict, cap: caps.Cap, now_mono: float) -> Iterator[bool]:
        seat = caps.take_seat(self.root, cap, str(task["id"]), self.worker_id)
        if seat is None:
            self.stats.record(taken.dirs.name, "cap_waits")
            self.aside.hold_for_slot(taken, cap.key, caps.RETRY_SECONDS, now_mono)
            yield False
            return
        try:
            yield True
        finally:  # CRASH: a dead worker's seat is freed by whoever recovers its claim
            caps.leave_seat(seat)

    def slot_for(self, taken: Claim, task: TaskDict, now: float, now_mono: float) -> bool:
        """Whether the task may start now, after an in-memory wait for its rate slot (see
        workflows.rates); if not, it went back to incoming/ unchanged. Neither is an attempt."""
        limit = self.code.limit_for(task, taken.dirs.name)
        if limit is None:
            return True
        got = rates.reserve(self.root, limit, str(task["id"]), now)
        if got.start_at is None or got.start_at > now:
            self.stats.record(taken.dirs.name, "rate_waits")
        if got.start_at is None:
            self.aside.hold_for_slot(taken, limit.key, got.retry_at - now, now_mono)
            return False
        if got.start_at > now:
            self.recorder.record_pending()  # (the last outcome does not wait with us)
            self.stopping.wait(max(0.0, got.start_at - time.time()))  # a stop wakes it
            if self.stopping.is_set():
                self.aside.release(taken)
                return False
        return True

    def drop_scratch(self) -> None:
        """Remove the worker's output scratch file (the last attempt's output is beside its
        task) and its batch list; a disk that refuses leaves them."""
        with contextlib.suppress(OSError):
            output_scratch(self.root, self.worker_id).unlink(missing_ok=True)
        self.handed.drop()


def log_fields(taken: Claim, task: TaskDict, attempt: int) -> str:
    return f"queue={taken.dirs.name} id={task['id']} task={task['task']} attempt={attempt}"


@dataclass
class BatchRun:
    """The attempts of one batch in the handler process, by their place in the batch (see
    execute.Executor.run_batch); each is let go of as it ends or goes back (a batch extended
    for a second holds thousands of quick tasks)."""

    attempts: Attempts
    more: Callable[[], list[tuple[Claim, TaskDict]]]
    began: float  # (monotonic) the first hand-over
    handed_at: float = 0.0  # (monotonic) the last one
    handed: int = 0  # how many were handed over
    runs: dict[int, Run] = field(default_factory=dict)

    def hand_over(self, runs: list[Run]) -> list[tuple[dict[str, JSON], Turn]]:
        """List `runs` as handed over (after the one running, when the batch is extended: it
        is the one that may have started) and take them in; their requests and turns."""
        running = [self.runs[self.handed - 1].taken] if self.handed else []
        self.attempts.hand_over(running + [run.taken for run in runs])
        self.runs.update(enumerate(runs, self.handed))
        self.handed += len(runs)
        self.handed_at = time.monotonic()
        return [(run.request, run.turn) for run in runs]

    def ended(self, i: int, outcome: Outcome) -> None:
        self.attempts.ended(self.runs.pop(i), outcome)
        self.attempts.recorder.record_pending()  # (while the next one runs)

    def given_back(self, a: int, b: int) -> None:
        self.attempts.put_back([self.runs.pop(i) for i in range(a, b)])

    def winding_down(self) -> bool:
        """Whether the tasks not started are to go back: a stop, a disk that refuses outcomes,
        or BATCH_SECONDS since they were handed over."""
        over = time.monotonic() - self.handed_at > handover.BATCH_SECONDS
        return self.attempts.stopping.is_set() or over or self.attempts.recorder.refused()

    def extended(self) -> list[tuple[dict[str, JSON], Turn]]:
        """The next batch, handed over as the last task starts (see spool.handover)."""
        if time.monotonic() - self.began > handover.EXTEND_SECONDS or self.winding_down():
            return []
        added = [self.attempts.prepare(taken, task) for taken, task in self.more()]
        return self.hand_over(added) if added else []
