"""Handlers the tests' worker subprocesses import (named by tests/spool.toml)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import spool
from spool import Spool

app = Spool(root=os.environ.get("SPOOL_ROOT", "var/spool"))


def note_started() -> None:
    """Touch $SPOOL_TEST_STARTED/<task id> where the tests' worker set it: the handler runs.
    A claim not yet handed to the handler never counts as an attempt, so a test that kills a
    worker to lose an attempt waits for this mark first (conftest's `has_started`)."""
    where = os.environ.get("SPOOL_TEST_STARTED")
    if where:
        Path(where, spool.current().id).touch()


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
def record(path: str, value: str, pad: str = "") -> str:
    """Append `value` and this process's pid to the file at `path` (one line per run); `pad`
    only makes the task file and its outcome bigger."""
    with open(path, "a") as f:
        f.write(f"{value} {os.getppid()}\n")
    return value


@app.task()
def sleep_then_return(seconds: float, value: object = None) -> object:
    note_started()
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
    note_started()
    time.sleep(seconds)
    return value


@app.task(at_most_once=True)
def sleep_at_most_once(seconds: float) -> None:
    note_started()
    time.sleep(seconds)


@app.task(max_retries=0)
def kill_worker() -> None:
    """A poison pill: SIGKILL the worker that runs this handler (and so the handler too)."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)


# ---- handlers that talk back (spool.current, Retry, Fail, progress; see spool.context) ----


@app.task()
def show_context() -> dict[str, object]:
    """Return what spool.current() says (the first run asks to run again)."""
    ctx = spool.current()
    seen = {k: v for k, v in ctx.to_json().items()}
    if ctx.attempt == 1:
        raise spool.Retry(after=0.05, reason="see the second attempt")
    return seen


@app.task()
def retry_later(seconds: float, reason: str = "mailbox busy", count: bool = True) -> int:
    """Ask to run again in `seconds` on the first run; succeed on the next."""
    ctx = spool.current()
    if ctx.attempt == 1:
        raise spool.Retry(after=seconds, reason=reason, count=count)
    return ctx.attempt


@app.task(max_retries=0)
def release_forever() -> None:
    """Always ask to run again without spending a retry (bounded by MAX_RELEASES)."""
    raise spool.Retry(after=0, reason="not yet", count=False)


@app.task()
def fail_for_good(reason: str = "invalid address") -> None:
    raise spool.Fail(reason)


@app.task()
def count_progress_writes(calls: int) -> int:
    """Call spool.progress `calls` times; return how many versions of its file it saw."""
    beside = Path(str(spool.current().beside)) / "progress.json"
    versions = set()
    for i in range(calls):
        spool.progress(i + 1, calls, message=f"item {i + 1}")
        with contextlib.suppress(FileNotFoundError):
            info = beside.stat()
            versions.add((info.st_ino, info.st_mtime_ns))
    return len(versions)


@app.task()
def progress_then_wait(marker: str) -> str:
    """Report 3 of 10, then wait until `marker` exists; report 10 of 10 and return."""
    spool.progress(3, 10, message="three done")
    print("three done so far")
    while not os.path.exists(marker):
        time.sleep(0.01)
    spool.progress(10, 10, message="all done")
    return "ok"


@app.task(max_retries=0)
def talk(size: int = 0) -> str:
    """Write to stdout, stderr, logging and a child process; then `size` bytes more."""
    import logging

    print("to stdout")
    sys.stderr.write("to stderr\n")
    logging.getLogger("tests.tasks").warning("to logging")
    subprocess.run(["echo", "from a child process"], check=True)
    if size:
        sys.stdout.write("x" * (size - 1) + "\n")
    print("the end")
    return "said"


@app.task()
def talk_then_fail() -> None:
    print(f"attempt {spool.current().attempt} says hello")
    raise RuntimeError("after talking")


@app.task(max_retries=0)
def talk_until(marker: str) -> str:
    """Print a line every 20 ms until `marker` exists."""
    n = 0
    while not os.path.exists(marker):
        n += 1
        print(f"line {n}")
        time.sleep(0.02)
    print("finished")
    return "ok"


@app.task()
def spawn_and_sleep(path: str, seconds: float) -> None:
    """Start a child process that sleeps, write its pid to `path`, and wait for it."""
    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    Path(path).write_text(str(child.pid))
    child.wait()


@app.task()
def stop_when_cancelled(path: str) -> str:
    """Wait until spool.current().cancelled(); note it in `path`."""
    ctx = spool.current()
    while not ctx.cancelled():
        time.sleep(0.01)
    Path(path).write_text("saw the cancel")
    time.sleep(30)  # the worker stops the attempt anyway
    return "late"


ERRORS: dict[str, type[Exception]] = {
    "ConnectionRefusedError": ConnectionRefusedError,
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
}


@app.task(retry_on=(OSError, "TimeoutError"), max_retries=1)
def only_os_errors_retried(kind: str) -> None:
    raise ERRORS[kind](f"a {kind}")


@app.task(no_retry_on=(ValueError,), max_retries=1)
def value_errors_not_retried(kind: str) -> None:
    raise ERRORS[kind](f"a {kind}")


@app.task(max_retries=0)
def talk_a_lot(chunks: int, size: int, pause: float) -> int:
    """Write `chunks` lines of `size` bytes, `pause` seconds apart; then a last line."""
    for n in range(chunks):
        sys.stdout.write(f"{n:08d}" + "y" * (size - 9) + "\n")
        sys.stdout.flush()
        time.sleep(pause)
    print("the last line")
    return chunks * size


@app.task()
def record_slowly(path: str, value: str, seconds: float) -> str:
    """Sleep, then append `value` to the file at `path` (a step that can be killed mid-way)."""
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{value} {os.getppid()}\n")
    return value


@app.task(rate="10/s")
def rated() -> float:
    """A task held to 10 starts a second across every worker (see workflows.rates)."""
    return time.time()


@app.task(concurrency=2)
def capped(path: str, seconds: float) -> None:
    """At most 2 at once across every worker: append when it started and when it ended."""
    sleep_noting_span(path, seconds)


def sleep_noting_span(path: str, seconds: float) -> None:
    """Sleep, then append when the sleep started and when it ended to `path`."""
    started = time.time()
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{started} {time.time()}\n")


# ---- batched claims (tests/test_batch_claims.py) ------------------------------------------


@app.task()
def note_start_then_sleep(path: str, value: str, seconds: float) -> str:
    """Append `value` and this handler process's pid to `path` as it starts; then sleep."""
    with open(path, "a") as f:
        f.write(f"{value} {os.getpid()}\n")
    time.sleep(seconds)
    return value


@app.task
def sleep_then_list(directory: str, seconds: float) -> list[str]:
    """Sleep, then return the names in `directory` (what the workers hold claimed meanwhile)."""
    time.sleep(seconds)
    return sorted(os.listdir(directory))


@app.task(concurrency=1)
def capped_alone(path: str, seconds: float) -> None:
    """One at a time across every worker: append when it started and when it ended."""
    sleep_noting_span(path, seconds)


@app.task()
def say(word: str) -> str:
    """Print `word` (the attempt's whole output) and return it."""
    print(word)
    return word
