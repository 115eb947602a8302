"""Handlers the tests' worker subprocesses import (named by tests/spool.toml)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from spool import Spool

app = Spool(root=os.environ.get("SPOOL_ROOT", "var/spool"))


@app.task()
def echo(x: object = None) -> object:
    return x


@app.task()
def add(a: int, b: int) -> int:
    return a + b


@app.task()
def noop() -> None:
    return None


@app.task()
def record(path: str, value: str) -> str:
    """Append `value` and this process's pid to the file at `path` (one line per run)."""
    with open(path, "a") as f:
        f.write(f"{value} {os.getppid()}\n")
    return value


@app.task()
def sleep_then_return(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


@app.task()
def sleep_in_subprocess(seconds: float) -> None:
    subprocess.run([sys.executable, "-c", f"import time; time.sleep({seconds})"], check=True)


@app.task()
def fail(message: str = "boom") -> None:
    raise RuntimeError(message)


@app.task()
def fail_until(marker: str, times: int) -> int:
    """Fail the first `times` runs (counted in the file `marker`), then succeed."""
    path = Path(marker)
    runs = int(path.read_text()) if path.exists() else 0
    path.write_text(str(runs + 1))
    if runs < times:
        raise RuntimeError(f"run {runs + 1} fails on purpose")
    return runs + 1


@app.task()
def exit_hard(code: int = 3) -> None:
    os._exit(code)


@app.task()
def exit_hard_once(marker: str) -> str:
    """os._exit on the first run (marker absent), succeed on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("ran")
        os._exit(9)
    return "second run"


@app.task()
def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@app.task()
def write_pid_then_sleep(path: str, seconds: float) -> str:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


@app.task(max_retries=0)
def unreliable_no_retry() -> None:
    raise ValueError("no retries for me")


@app.task(timeout=0.5)
def short_timeout() -> None:
    time.sleep(30)


@app.task()
def sleep_in_subprocess_pid(path: str, seconds: float) -> None:
    """Start a sleeping subprocess, write its pid to `path`, and wait for it."""
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    Path(path).write_text(str(proc.pid))
    proc.wait()


@app.task(queue="mail")
def send_mail(to: str, subject: str = "", *, cc: str = "") -> str:
    """Pretend to send a mail: a task that declares its queue."""
    return f"to {to}: {subject}"


@app.task(max_retries=0)
def sleep_without_retries(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


@app.task(at_most_once=True)
def sleep_at_most_once(seconds: float) -> None:
    time.sleep(seconds)


@app.task(max_retries=0)
def kill_worker() -> None:
    """A poison pill: SIGKILL the worker that runs this handler (and so the handler too)."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)


@app.task()
def record_slowly(path: str, value: str, seconds: float) -> str:
    """Sleep, then append `value` to the file at `path` (a step that can be killed mid-way)."""
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{value} {os.getppid()}\n")
    return value


@app.task(rate="10/s")
def rated() -> float:
    """A task held to 10 starts a second across every worker (see spool.rates)."""
    return time.time()


@app.task(concurrency=2)
def capped(path: str, seconds: float) -> None:
    """At most 2 at once across every worker: append when it started and when it ended."""
    started = time.time()
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{started} {time.time()}\n")
