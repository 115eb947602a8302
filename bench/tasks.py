"""Handlers of the benchmark's worker subprocesses (named by bench/spool.toml)."""

from __future__ import annotations

import os
import time

from spool import Spool

app = Spool(root="var/spool")  # producers never use it: the worker collects the tasks below


@app.task()
def noop() -> None:
    return None


@app.task()
def stamp() -> float:
    """Return the wall-clock time at which the handler started (it lands in the done file)."""
    return time.time()


@app.task()
def sleep5() -> None:
    """Workload 4 of `python -m bench compare`: a task that waits 5 ms."""
    time.sleep(0.005)


@app.task(timeout=900)
def wait(seconds: float) -> None:
    """`python -m bench.hosts`: a task still running when its host dies."""
    time.sleep(seconds)


@app.task()
def chaos_effect(tag: str, ms: int) -> int:
    """`python -m bench.chaos`: a side effect per run, one line appended to a log outside the
    spool (`<tag> <pid> <time>`, one O_APPEND write), halfway through a run of `ms` ms."""
    time.sleep(ms / 2000)
    line = f"{tag} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(os.environ["SPOOL_CHAOS_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    time.sleep(ms / 2000)
    return os.getpid()
