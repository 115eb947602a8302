"""Run one attempt of a handler in a child process, under its timeout -> Outcome.

Each worker keeps one child process that imports the configured task modules and runs
handlers on request, one at a time. The worker can always take an attempt back: on timeout it
kills the child's whole process group (a handler stuck in C code, or waiting on a subprocess,
goes with it) and starts a new child; a child that dies (os._exit, a signal, the OOM killer)
is a lost attempt (`Outcome.lost`): like a worker's death, it counts against the task's
`max_lost`, not its `max_retries`. The child dies with the worker (PR_SET_PDEATHSIG on Linux).

Worker and child speak length-framed JSON over two pipes; nothing is pickled.

Output: the child writes fds 1 and 2 to its worker's scratch file (see spool.output); when an
attempt ends, the child moves its output beside the task before it replies, or the worker does
after it stopped the child (timeout, cancel) or found it dead.

Cancel: a `cancel` file beside the running task (see manage.cancel) stops the attempt like its
timeout (the child's whole process group); the worker looks for it once per POLL_SLICE_SECONDS.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spool import context
from spool.envelope import JSON
from spool.errors import ConfigError, error_dict, exception_name
from spool.fsio import UnreadableFile, read_regular
from spool.layout import CANCEL_FILE
from spool.output import OUTPUT_LIMIT_BYTES, Scratch, capture_output, end_output
from spool.registry import TaskOptions

CHILD_CODE = "from spool.execute import child_main; child_main()"
START_TIMEOUT_SECONDS = 120.0
START_TRIES = 3  # a child killed before its first message is started again this often
POLL_SLICE_SECONDS = 0.1
HEADER = struct.Struct("!I")
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


class Channel:
    """Length-framed messages over a pair of pipe ends (JSON inside; nothing is pickled)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.poller = select.poll()
        self.poller.register(read_fd, select.POLLIN)

    def send(self, message: bytes) -> None:
        """Raises: OSError (BrokenPipeError when the other side is gone)."""
        view = memoryview(HEADER.pack(len(message)) + message)
        while view:
            view = view[os.write(self.write_fd, view) :]

    def readable(self, timeout: float | None) -> bool:
        return bool(self.poller.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def receive(self) -> bytes:
        """Raises: EOFError when the other side is gone."""
        (size,) = HEADER.unpack(self.read_exactly(HEADER.size))
        return self.read_exactly(size)

    def read_exactly(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = os.read(self.read_fd, left)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


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
        if self.channel is None:  # not started yet, or killed after the last attempt
            self.start()
        assert self.channel is not None
        started = time.time()
        deadline = None if timeout is None else time.monotonic() + timeout
        log_path = request.get("log")
        try:
            self.channel.send(json.dumps(request).encode())
        except OSError:  # it died between attempts
            return self.child_lost(started, log_path)
        if meanwhile is not None:
            meanwhile()
        cancel = None if beside is None else f"{beside}/{CANCEL_FILE}"
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
            try:
                ready = self.channel.readable(slice_)
                reply = json.loads(self.channel.receive()) if ready else None
            except (EOFError, OSError):
                return self.child_lost(started, log_path)
            if reply is not None:
                return outcome_of(reply, started, time.time())
            why = "stop" if stop else "cancel" if cancelled else "timeout" if over else None
            if why is not None:
                return self.stopped(started, log_path, why, timeout, cancel)
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


def cancel_reason(request: str) -> str:
    """The reason a cancel request gives (see manage.ask_to_cancel)."""
    try:  # (no-follow, regular files only: a FIFO planted there must not hang the worker)
        reason = json.loads(read_regular(Path(request), SMALL_FILE_BYTES)[0]).get("reason")
    except (OSError, UnreadableFile, ValueError, AttributeError):
        reason = None
    return f"{reason or 'cancelled'} (while it ran)"


def outcome_of(reply: dict[str, Any], started: float, finished: float) -> Outcome:
    progress = reply.get("progress")
    if reply.get("ok"):
        return Outcome(True, started, finished, result=reply.get("result"), progress=progress)
    return Outcome(
        False,
        started,
        finished,
        error=reply["error"],
        asked=reply.get("asked"),
        kinds=tuple(reply.get("kinds", ())),
        progress=progress,
    )


# ---- the child side ----------------------------------------------------------------------


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the worker that started it dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the worker died before the prctl
            os._exit(1)


def child_main() -> None:
    """Entry point of the handler process (argv: read fd, write fd, JSON settings)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when an attempt stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # a reload is the worker's to do; a stray SIGHUP (sent to every spool process) must not end
    # the attempt (a no-op handler, not SIG_IGN: what the handler starts gets the default back)
    signal.signal(signal.SIGHUP, lambda signum, frame: None)
    channel = Channel(int(sys.argv[1]), int(sys.argv[2]))
    settings = json.loads(sys.argv[3])
    if settings.get("output"):
        capture_output(settings["output"])
    from spool.registry import collect_tasks, import_task_modules

    try:
        modules = import_task_modules(settings["modules"], settings["project_dir"])
        tasks = collect_tasks(modules)
    except Exception as exc:
        channel.send(json.dumps({"error": str(exc)}).encode())
        return
    described = {name: task.describe().to_json() for name, task in tasks.items()}
    channel.send(json.dumps({"tasks": described}).encode())
    limit = int(settings.get("output_limit") or OUTPUT_LIMIT_BYTES)
    while True:
        try:
            request = json.loads(channel.receive())
        except EOFError:
            return
        reply = run_handler(tasks, request)
        if settings.get("output"):
            end_output(request.get("log"), limit)
        channel.send(encode_reply(reply))


def run_handler(tasks: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    task = tasks[request["task"]]
    fields = request.get("context")
    token = context.begin(fields) if fields is not None else None
    try:
        result = task.fn(*request.get("args", []), **request.get("kwargs", {}))
    except (context.Retry, context.Fail) as exc:
        kind = "Retry" if isinstance(exc, context.Retry) else "Fail"
        reply = {"ok": False, "error": error_dict(kind, str(exc), user_traceback(exc))}
        reply["asked"] = exc.asked()
    except Exception as exc:
        error = error_dict(exception_name(type(exc)), str(exc), user_traceback(exc))
        kinds = [exception_name(k) for k in type(exc).__mro__ if issubclass(k, BaseException)]
        reply = {"ok": False, "error": error, "kinds": kinds}
    else:
        reply = {"ok": True, "result": result}
    finally:
        progress = None if token is None else context.end(token)
    if progress is not None:
        reply["progress"] = progress
    return reply


def user_traceback(exc: BaseException) -> str:
    """The traceback without spool's own frame (run_handler): the handler's frames only."""
    tb = exc.__traceback__
    return "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))


def encode_reply(reply: dict[str, Any]) -> bytes:
    try:
        return json.dumps(reply, allow_nan=False).encode()
    except (TypeError, ValueError):
        reply["result"] = repr(reply.get("result"))  # keep the outcome; the value as text
        reply["result_is_repr"] = True
        return json.dumps(reply).encode()
