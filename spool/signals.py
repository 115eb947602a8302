"""How the resident processes (worker, scheduler, notifier, MQTT intake) take signals.

SIGTERM and SIGINT ask to stop; SIGHUP, where a process has it, asks to reload the config;
SIGQUIT, where a process has it (the worker), asks to stop now. Two deliveries of one signal
can arrive as one (the OS and Python keep a flag per signal, not a count), so a meaning that
must not be lost has a signal of its own instead of "the second TERM".
Handlers are installed only from the main thread (Python allows no other), so a process run
inside a test's thread keeps the signals it had.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
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
