"""How the resident processes (worker, scheduler, notifier, MQTT intake) take signals.

SIGTERM and SIGINT ask to stop; SIGHUP, where a process has it, asks to reload (the config;
the task code, for a worker). For a worker and `spool up`, a SIGHUP that comes with the loss of
the controlling terminal they started on is a hang-up, and they stop (see Terminal).
SIGQUIT, where a process has it (the worker), asks to stop now. Two deliveries of one signal
can arrive as one (the OS and Python keep a flag per signal, not a count), so a meaning that
must not be lost has a signal of its own instead of "the second TERM".
Handlers are installed only from the main thread (Python allows no other), so a process run
inside a test's thread keeps the signals it had.

Python runs a signal handler in the main thread, between two of its steps, whatever that thread
holds: a handler that sets an Event (or logs) would wait forever for a lock the main thread
holds right then, such as that Event's own while the loop clears it or starts to wait on it. So
the handler installed here only queues the signal's number (`SimpleQueue.put` is reentrant),
and a thread of its own, `spool-signals`, runs the process's handler for it, in order.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

Handler = Callable[[int, FrameType | None], None]

log = logging.getLogger(__name__)


def install(
    on_stop: Handler, on_reload: Handler | None = None, on_stop_now: Handler | None = None
) -> None:
    """Run `on_stop` for SIGTERM and SIGINT, `on_reload` for SIGHUP and `on_stop_now` for
    SIGQUIT (where given), in the `spool-signals` thread (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        return
    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop}
    if on_reload is not None:
        handlers[signal.SIGHUP] = on_reload
    if on_stop_now is not None:
        handlers[signal.SIGQUIT] = on_stop_now
    dispatcher = Dispatcher.of_process()
    for signum, handler in handlers.items():
        dispatcher.handlers[signum] = handler
        signal.signal(signum, dispatcher.queue_signal)


class Dispatcher:
    """The process's signal handlers, run one signal at a time in a thread of their own."""

    the_one: Dispatcher | None = None

    def __init__(self) -> None:
        self.handlers: dict[int, Handler] = {}
        self.pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        threading.Thread(target=self.run, name="spool-signals", daemon=True).start()

    @classmethod
    def of_process(cls) -> Dispatcher:
        if cls.the_one is None:
            cls.the_one = cls()
        return cls.the_one

    def queue_signal(self, signum: int, frame: FrameType | None) -> None:
        # RACE: runs in the main thread whatever it holds: nothing here may take a lock
        self.pending.put(signum)

    def run(self) -> None:
        while True:
            signum = self.pending.get()
            try:
                self.handlers[signum](signum, None)
            except Exception:  # (a handler's bug must not end the thread: later signals)
                log.exception("the handler of signal %d failed", signum)


@dataclass
class Terminal:
    """Tells a hang-up (the terminal the process started on is gone) from a SIGHUP sent on
    purpose. Make it before installing handlers, so that it sees nohup's ignored SIGHUP."""

    attached: bool  # it had a controlling terminal, not yet seen to go
    nohup: bool  # SIGHUP was ignored when it started: a hang-up is to be ignored too

    @classmethod
    def now(cls) -> Terminal:
        return cls(has_terminal(), signal.getsignal(signal.SIGHUP) is signal.SIG_IGN)

    def hung_up(self) -> bool:
        """Whether the SIGHUP just received is the hang-up (once; a later one is a request)."""
        if self.attached and not has_terminal():
            self.attached = False
            return True
        return False


def has_terminal() -> bool:
    """Whether this process has a controlling terminal (it has none after a hang-up)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True
