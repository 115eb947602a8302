"""How the resident processes (worker, scheduler, notifier, MQTT intake) take signals.

SIGTERM and SIGINT ask to stop; SIGHUP, where a process has it, asks to reload the config.
Handlers are installed only from the main thread (Python allows no other), so a process run
inside a test's thread keeps the signals it had.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

Handler = Callable[[int, FrameType | None], None]


def install(on_stop: Handler, on_reload: Handler | None = None) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_stop)
    if on_reload is not None:
        signal.signal(signal.SIGHUP, on_reload)
