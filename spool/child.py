"""The handler process's side: import the task modules, then run handlers on the worker's request.

A request is one task, or a batch of them (see spool.handover): the tasks of a batch run one
after the other, each reply sent as soon as its task ends, so the next one starts without a
round trip to the worker. The worker may take back the batch's tasks that have not started (a
stop signal, the batch ran long), at any time: a thread reads the pipe while a handler runs
and answers at once (see Inbox). A task cancelled while it waited its turn does not run (its
reply says it was cancelled). Everything else about an attempt (its timeout, a cancel
while it runs, a crash) is the worker's to see (see spool.execute).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from spool import context
from spool.channel import Channel
from spool.errors import error_dict, exception_name
from spool.execute import cancel_reason
from spool.layout import CANCEL_FILE
from spool.output import OUTPUT_LIMIT_BYTES, capture_output, end_output


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
    serve(channel, tasks, limit if settings.get("output") else None)


@dataclass
class Inbox:
    """The requests the handler process has yet to start, fed by a thread that reads the pipe,
    so the worker can take back a batch's tasks that have not started while one runs (its
    reply says how many: the last ones of the batch). A request is started or taken back, never
    both: both happen under `lock`."""

    channel: Channel
    # (batch number or None, place in its batch, request)
    waiting: deque[tuple[int | None, int, dict[str, Any]]] = field(default_factory=deque)
    closed: bool = False  # the worker closed the pipe
    lock: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        threading.Thread(target=self.read, name="spool-inbox", daemon=True).start()

    def read(self) -> None:
        while True:
            try:
                message = json.loads(self.channel.receive())
            except EOFError:
                with self.lock:
                    self.closed = True
                    self.lock.notify()
                return
            with self.lock:
                if "take_back" in message:
                    self.take_back(message["take_back"])
                elif "batch" in message:  # (`at`: more of a batch, see Executor.hand_more)
                    requests = enumerate(message["batch"], message.get("at", 0))
                    self.waiting.extend((message["n"], i, request) for i, request in requests)
                else:
                    self.waiting.append((None, 0, message))
                self.lock.notify()

    def take_back(self, number: int) -> None:
        """Give back the tasks of batch `number` not started, but its first: that one runs,
        as a task claimed alone would, even if the stop came before it started."""
        kept = deque(item for item in self.waiting if item[0] != number or item[1] == 0)
        taken = len(self.waiting) - len(kept)
        self.waiting = kept
        self.channel.send(json.dumps({"taken_back": taken, "n": number}).encode())

    def next(self) -> dict[str, Any] | None:
        """The next request, now started; None once the worker is gone."""
        with self.lock:
            while not self.waiting and not self.closed:
                self.lock.wait()
            return self.waiting.popleft()[2] if self.waiting else None


def serve(channel: Channel, tasks: dict[str, Any], output_limit: int | None) -> None:
    """Run what the worker asks for until it closes the pipe."""
    inbox = Inbox(channel)
    while (request := inbox.next()) is not None:
        channel.send(run_one(tasks, request, output_limit))


def run_one(tasks: dict[str, Any], request: dict[str, Any], output_limit: int | None) -> bytes:
    """Run one request; its encoded reply (its output moved beside the task first). A task
    cancelled before it started (a batch's task waiting its turn) does not run."""
    timeout = request.get("timeout")
    fields = request.get("context")
    beside = None if fields is None else fields.get("beside")
    if beside is not None and os.path.exists(f"{beside}/{CANCEL_FILE}"):
        reason = cancel_reason(f"{beside}/{CANCEL_FILE}", "before it started")
        error = error_dict("Cancelled", reason)
        return encode_reply({"ok": False, "cancelled": True, "error": error})
    if fields is not None and timeout is not None:  # (a batch's task starts later than sent)
        fields["deadline"] = time.time() + timeout
    reply = run_handler(tasks, request)
    if output_limit is not None:
        end_output(request.get("log"), output_limit)
    return encode_reply(reply)


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
