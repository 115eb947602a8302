"""Signals reach a resident process's handlers whatever its main thread holds (spool.signals)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import PROJECT_DIR

# The main thread holds the lock of the very Event the stop handler sets, and a SIGTERM arrives
# then: a handler run in the main thread would wait for that lock forever.
HELD_WHILE_SIGNALLED = textwrap.dedent(
    """
    import os, signal, threading
    from spool import signals

    stopped = threading.Event()
    signals.install(lambda signum, frame: stopped.set())
    with stopped._cond:  # (the Event's own lock, the one its set() takes)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # (Python runs a handler between two of these)
            pass
    print("stopped" if stopped.wait(5) else "not stopped", flush=True)
    """
)


def test_a_stop_signal_while_the_main_thread_holds_the_stop_events_lock_still_stops() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELD_WHILE_SIGNALLED],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert (done.returncode, done.stdout) == (0, "stopped\n"), done.stderr[-2000:]
