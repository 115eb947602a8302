"""How the resident processes (worker, scheduler, notifier, MQTT intake) take signals.

SIGTERM and SIGINT ask to stop; SIGHUP, where a process has it, asks to reload (the config;
the task code, for a worker). For a worker and `spool up`, a SIGHUP that comes with the loss of
the controlling terminal they started on is a hang-up, and they stop (see Terminal).
SIGQUIT, where a process has it (the worker), asks to stop now. Two deliveries of one signal
can arrive as one (the OS and Python keep a flag per signal, not a count), so a meaning that
must not be lost has a signal of its own instead of "the second TERM".
Handlers are installed only from the main thread (Python allows no other), so a process run
inside a test's thread keeps the signals it had.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

Handler = Callable[[int, FrameType | None], None]


def install(
    on_stop: Handler, on_reload: Handler | None = None, on_stop_now: Handler | None = None
) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_stop)
    if on_reload is not None:
        signal.signal(signal.SIGHUP, on_reload)
    if on_stop_now is not None:
        signal.signal(signal.SIGQUIT, on_stop_now)


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
