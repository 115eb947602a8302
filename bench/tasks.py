"""Handlers of the benchmark's worker subprocesses (named by bench/spool.toml)."""

from __future__ import annotations

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
