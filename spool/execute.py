"""Run one attempt of a handler in a child process, under its timeout -> Outcome.

Each worker keeps one child process (see spool.child) that imports the configured task modules
and runs handlers on request, one at a time: one task per request, or a batch of them sent at
once (see spool.handover), each outcome sent back as it ends. The worker can always take an
attempt back: on timeout it kills the child's whole process group (a handler stuck in C code,
or waiting on a subprocess, goes with it) and starts a new child; a child that dies (os._exit,
a signal, the OOM killer) is a lost attempt (`Outcome.lost`): like a worker's death, it counts
against the task's `max_lost`, not its `max_retries`. The child dies with the worker
(PR_SET_PDEATHSIG on Linux).

Worker and child speak length-framed JSON over two pipes; nothing is pickled.

Output: the child writes fds 1 and 2 to its worker's scratch file (see spool.output); when an
attempt ends, the child moves its output beside the task before it replies, or the worker does
after it stopped the child (timeout, cancel) or found it dead.

Cancel: a `cancel` file beside the running task (see manage.cancel) stops the attempt like its
timeout (the child's whole process group); the worker looks for it once per POLL_SLICE_SECONDS.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spool.channel import Channel
from spool.envelope import JSON
from spool.errors import ConfigError, error_dict
from spool.fsio import UnreadableFile, read_regular
from spool.layout import CANCEL_FILE
from spool.output import Scratch
from spool.registry import TaskOptions

CHILD_CODE = "from spool.child import child_main; child_main()"
START_TIMEOUT_SECONDS = 120.0
START_TRIES = 3  # a child killed before its first message is started again this often
POLL_SLICE_SECONDS = 0.1
SMALL_FILE_BYTES = 64 * 1024  # a cancel request is far smaller


@dataclass
class Outcome:
    """What one attempt ended as: ok with a result, or an error dict {type, message, traceback}."""

    ok: bool
    started_at: float
    finished_at: float
    result: JSON = None
    error: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False  # the worker was told to stop now: put the task back
    lost: bool = False  # the handler process died during the attempt (see decision.lose)
    cancelled: bool = False  # an operator cancelled the running task (see manage.cancel)
    asked: dict[str, JSON] | None = None  # what the handler raised for: spool.Retry or Fail
    kinds: tuple[str, ...] = ()  # the error's type and its bases, by name (retry_on)
    progress: JSON = None  # the last spool.progress() of the attempt

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at


@dataclass
class Turn:
    """One attempt's place in a run: when it started (wall clock), its timeout, where its
    output goes and the task's directory beside it (a cancel request appears there)."""

    timeout: float | None
    log_path: JSON
    beside: str | None
    started: float = 0.0
    started_mono: float = 0.0  # (deadlines are monotonic)

    def start(self) -> Turn:
        self.started, self.started_mono = time.time(), time.monotonic()
        return self


@dataclass
class TakeBack:
    """Asks the handler process, once, for the tasks of batch `number` it has not started (see
    child.Inbox), when `wanted()` (a stop signal, the batch ran long)."""

    number: int
    wanted: Callable[[], bool]
    asked: bool = False

    def ask(self, channel: Channel) -> None:
        if self.asked or not self.wanted():
            return
        self.asked = True
        with contextlib.suppress(OSError):  # (gone: the wait for its reply sees it)
            channel.send(json.dumps({"take_back": self.number}).encode())


class Executor:
    """The worker's side of the child process that runs handlers."""

    def __init__(
        self,
        tasks_modules: tuple[str, ...],
        project_dir: str,
        on_spawn: Callable[[int], None] | None = None,
        output: Scratch | None = None,
    ) -> None:
        self.tasks_modules, self.project_dir = tasks_modules, project_dir
        self.on_spawn = on_spawn
        self.output = output  # where the handler process writes (see spool.output)
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.tasks: dict[str, TaskOptions] = {}
        self.batches = 0  # batches sent, to number them

    def start(self) -> dict[str, TaskOptions]:
        """Start the child; return the tasks it registered. Raises: ConfigError.

        A child that dies before it says anything (killed while it imports: the OOM killer, an
        operator's kill) is started again, up to START_TRIES times; a module that does not
        import is a ConfigError at once.
        """
        for _ in range(START_TRIES):
            hello = self.spawn()
            if hello is not None:
                break
        if hello is None or "error" in hello:
            reason = hello["error"] if hello else "it exited or did not answer"
            self.kill()
            raise ConfigError(f"cannot start the handler process: {reason}")
        self.tasks = {name: TaskOptions.from_json(name, t) for name, t in hello["tasks"].items()}
        return self.tasks

    def spawn(self) -> dict[str, Any] | None:
        """Start a child process and return its first message (None: it died or is silent)."""
        self.kill()  # (a child that died before its first message)
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        settings: dict[str, JSON] = {"modules": list(self.tasks_modules)}
        settings["project_dir"] = self.project_dir
        settings["output"] = None if self.output is None else str(self.output.path)
        settings["output_limit"] = None if self.output is None else self.output.limit
        payload = json.dumps(settings)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", CHILD_CODE, str(to_child_r), str(from_child_w), payload],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                process_group=0,  # its own group: a timeout kills what it spawned too
                cwd=self.project_dir,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        if self.on_spawn is not None:
            self.on_spawn(self.proc.pid)  # its process group, for cleanup if the worker dies
        self.channel = Channel(from_child_r, to_child_w)
        return self.receive(START_TIMEOUT_SECONDS)

    def receive(self, timeout: float) -> dict[str, Any] | None:
        assert self.channel is not None
        try:
            if not self.channel.readable(timeout):
                return None
            message: dict[str, Any] = json.loads(self.channel.receive())
            return message
        except (EOFError, OSError):
            return None

    def run(
        self,
        request: dict[str, JSON],
        timeout: float | None,
        interrupted: Callable[[], bool],
        meanwhile: Callable[[], None] | None = None,
        beside: str | None = None,
    ) -> Outcome:
        """Run one attempt; never raises for what the handler does.

        `meanwhile` is called once the request is on its way, while the handler runs; `beside`
        is the task's directory beside it, where a cancel request appears (see manage.cancel).
        """
        turn = Turn(timeout, request.get("log"), beside).start()
        if not self.send(request):  # it died between attempts
            return self.child_lost(turn.started, turn.log_path)
        if meanwhile is not None:
            meanwhile()
        ended = self.await_reply(turn, interrupted)
        assert isinstance(ended, Outcome)  # (no batch: nothing to take back)
        return ended

    def run_batch(
        self,
        requests: list[dict[str, JSON]],
        turns: list[Turn],
        interrupted: Callable[[], bool],
        winding_down: Callable[[], bool],
        ended: Callable[[int, Outcome], None],
        given_back: Callable[[int, int], None],
        meanwhile: Callable[[], None] | None = None,
        more: Callable[[], list[tuple[dict[str, JSON], Turn]]] | None = None,
    ) -> int:
        """Run several attempts sent in one message (see spool.handover): `ended(i, outcome)` as
        each ends, `given_back(a, b)` for attempts a to b - 1 that will never start; return how
        many started.

        `meanwhile` is called once they are on their way. As the last one starts, `more()` may
        add attempts to the batch (see hand_more). Once `winding_down()` the handler process is
        asked for the ones it has not started; a stop, a timeout, a cancel or a lost handler
        process ends the batch with the attempt it cut short. Each turn is started as its
        attempt starts.
        """
        self.batches += 1
        take_back = TakeBack(self.batches, winding_down)
        turns[0].start()
        if not self.send({"batch": requests, "n": take_back.number}):
            ended(0, self.child_lost(turns[0].started, turns[0].log_path))
            given_back(1, len(turns))
            return 1
        if meanwhile is not None:
            meanwhile()
        waiting = dict(enumerate(turns))  # (by place; each let go of as it ends)
        i, end = 0, len(turns)
        while i < end:
            if more is not None and i == end - 1 and not take_back.asked:
                end += self.hand_more(take_back.number, more, waiting, end)
            got = self.await_reply(waiting[i], interrupted, take_back)
            if isinstance(got, int):  # the last `got` of them, taken back
                given_back(end - got, end)
                end -= got
                continue
            if i + 1 < end:
                waiting[i + 1].start()  # (about when the handler process began it)
            ended(i, got)
            del waiting[i]
            i += 1
            if self.channel is None:  # it was stopped or died: the rest never started
                given_back(i, end)
                return i
        return end

    def hand_more(
        self,
        number: int,
        more: Callable[[], list[tuple[dict[str, JSON], Turn]]],
        waiting: dict[int, Turn],
        at: int,
    ) -> int:
        """Add `more()` to batch `number` from place `at` on while its last attempt runs, so
        the handler process starts the next one as that one returns; how many were added
        (their turns too)."""
        added = more()
        if not added:
            return 0
        message = {"batch": [request for request, _ in added], "n": number, "at": at}
        waiting.update(enumerate((turn for _, turn in added), at))
        assert self.channel is not None
        with contextlib.suppress(OSError):  # (gone: the wait for the running one's reply sees it)
            self.channel.send(json.dumps(message).encode())
        return len(added)

    def send(self, message: dict[str, JSON]) -> bool:
        """Send a request to the handler process (started first if need be); False when it
        is gone."""
        if self.channel is None:  # not started yet, or killed after the last attempt
            self.start()
        assert self.channel is not None
        try:
            self.channel.send(json.dumps(message).encode())
        except OSError:
            return False
        return True

    def await_reply(
        self, turn: Turn, interrupted: Callable[[], bool], take_back: TakeBack | None = None
    ) -> Outcome | int:
        """Wait for the reply of the attempt that started at `turn.started`, under its timeout;
        or, once `take_back` asked for them, for how many tasks of its batch were taken back."""
        assert self.channel is not None
        deadline = None if turn.timeout is None else turn.started_mono + turn.timeout
        cancel = None if turn.beside is None else f"{turn.beside}/{CANCEL_FILE}"
        first = True
        while True:
            # A stop, a cancel or the timeout ends the attempt only if no reply is waiting: a
            # handler that has returned is never run again because of a late signal.
            stop = interrupted()
            # (looked for from the second slice on: a quick task costs no stat)
            cancelled = not first and cancel is not None and os.path.exists(cancel)
            # (no timeout: a slice is always left)
            left = POLL_SLICE_SECONDS if deadline is None else deadline - time.monotonic()
            over = left <= 0
            slice_ = 0.0 if stop or over or cancelled else min(POLL_SLICE_SECONDS, left)
            if take_back is not None:
                take_back.ask(self.channel)
            try:
                ready = self.channel.readable(slice_)
                reply = json.loads(self.channel.receive()) if ready else None
            except (EOFError, OSError):
                return self.child_lost(turn.started, turn.log_path)
            if reply is not None and "taken_back" not in reply:
                return outcome_of(reply, turn.started, time.time())
            if reply is not None:  # (an answer after its batch ended is stale: it took none)
                if take_back is not None and reply.get("n") == take_back.number:
                    return int(reply["taken_back"])
                continue
            why = "stop" if stop else "cancel" if cancelled else "timeout" if over else None
            if why is not None:
                return self.stopped(turn.started, turn.log_path, why, turn.timeout, cancel)
            first = False
            if self.output is not None:
                self.output.bound()

    def stopped(
        self, started: float, log_path: JSON, why: str, timeout: float | None, cancel: str | None
    ) -> Outcome:
        """Kill the child and its group mid-attempt (`why`: stop, cancel or timeout), keep what
        the attempt wrote, and say how it ended."""
        self.kill()
        self.keep_output(log_path)
        now = time.time()
        if why == "stop":
            return Outcome(False, started, now, interrupted=True)
        if why == "cancel" and cancel is not None:
            error = error_dict("Cancelled", cancel_reason(cancel))
            return Outcome(False, started, now, error=error, cancelled=True)
        message = f"attempt stopped after its timeout of {timeout:g} s"
        kinds = ("Timeout", "TimeoutError")  # (retry_on=(TimeoutError,) takes it)
        return Outcome(False, started, now, error=error_dict("Timeout", message), kinds=kinds)

    def keep_output(self, log_path: JSON) -> None:
        if self.output is not None and isinstance(log_path, str):
            self.output.keep(log_path)

    def child_lost(self, started: float, log_path: JSON = None) -> Outcome:
        code = self.kill()
        self.keep_output(log_path)
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        message = f"the handler process {how} during the attempt"
        error = error_dict("WorkerLost", message)
        return Outcome(False, started, time.time(), error=error, lost=True)

    def kill(self) -> int | None:
        """Kill the child and its process group; return its exit code."""
        proc, self.proc = self.proc, None
        if self.channel is not None:
            self.channel.close()
        self.channel = None
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return proc.wait()

    def stop(self) -> None:
        """End the child between attempts."""
        self.kill()


def cancel_reason(request: str, when: str = "while it ran") -> str:
    """The reason a cancel request gives (see manage.ask_to_cancel)."""
    try:  # (no-follow, regular files only: a FIFO planted there must not hang the worker)
        reason = json.loads(read_regular(Path(request), SMALL_FILE_BYTES)[0]).get("reason")
    except (OSError, UnreadableFile, ValueError, AttributeError):
        reason = None
    return f"{reason or 'cancelled'} ({when})"


def outcome_of(reply: dict[str, Any], started: float, finished: float) -> Outcome:
    progress = reply.get("progress")
    if reply.get("ok"):
        return Outcome(True, started, finished, result=reply.get("result"), progress=progress)
    if reply.get("cancelled"):  # (before it started: see child.run_one)
        return Outcome(False, started, finished, error=reply["error"], cancelled=True)
    return Outcome(
        False,
        started,
        finished,
        error=reply["error"],
        asked=reply.get("asked"),
        kinds=tuple(reply.get("kinds", ())),
        progress=progress,
    )
