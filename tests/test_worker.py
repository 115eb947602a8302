"""The worker: order, delays, retries, unique keys, signals, wake-ups, timeouts, competition.

Every test runs real `spool worker` processes on a spool root in tmp_path.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spool import Spool
from spool.decision import RetryPolicy
from tests.conftest import PROJECT_DIR, names, run_burst, wait_until
from tests.test_intake import drop

Starter = Callable[..., subprocess.Popen[bytes]]


def read_pid(path: Path) -> int | None:
    """The pid a handler wrote to `path`, or None while it is not (completely) there."""
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def is_running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def has_state(app: Spool, task_id: str, state: str) -> Callable[[], bool]:
    return lambda: app.state_of(task_id) == state


def recorded(log: Path) -> list[str]:
    """Values the `record` handler appended to `log`, in order."""
    if not log.exists():
        return []
    return [line.split()[0] for line in log.read_text().splitlines()]


@pytest.fixture
def start_worker_with(spool_root: Path, tmp_path: Path) -> Iterator[Callable[[str], Starter]]:
    """Start resident workers with a config of their own (TOML text); all killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def with_config(toml: str) -> Starter:
        config = tmp_path / f"spool-{len(procs)}.toml"
        config.write_text(toml)

        def start(*args: str, stderr: int | None = None) -> subprocess.Popen[bytes]:
            env = {**os.environ, "SPOOL_ROOT": str(spool_root), "PYTHONUNBUFFERED": "1"}
            cmd = [sys.executable, "-m", "spool", "--root", str(spool_root)]
            cmd += ["--config", str(config), "worker", *args]
            proc = subprocess.Popen(cmd, cwd=PROJECT_DIR, env=env, stderr=stderr)
            procs.append(proc)
            return proc

        return start

    yield with_config
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


# ---- order and time ------------------------------------------------------------------------


def test_tasks_run_by_priority_then_first_enqueued_first(
    app: Spool, spool_root: Path, tmp_path: Path
) -> None:
    log = tmp_path / "order.log"
    for value, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 9), ("e", 5), ("f", 0), ("g", 9)]:
        app.enqueue("record", args=[str(log), value], priority=priority)
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    assert recorded(log) == ["d", "g", "b", "e", "a", "c", "f"]


def test_a_dropped_file_takes_its_place_by_the_priority_it_names(
    app: Spool, spool_root: Path, tmp_path: Path
) -> None:
    log = tmp_path / "order.log"
    app.enqueue("record", args=[str(log), "enqueued-first"], priority=5)
    task = {"task": "record", "args": [str(log), "dropped-urgent"], "priority": 9}
    drop(spool_root, "urgent.json", json.dumps(task).encode())
    app.enqueue("record", args=[str(log), "enqueued-last"], priority=9)
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    assert recorded(log) == ["dropped-urgent", "enqueued-last", "enqueued-first"]


def test_a_delayed_task_waits_in_delayed_then_runs_after_its_time(
    app: Spool, start_worker: Starter
) -> None:
    task_id = app.enqueue("echo", args=["later"], delay=1.0)
    assert app.state_of(task_id) == "delayed"
    start_worker()
    wait_until(has_state(app, task_id, "done"), timeout=15)
    shown = app.show(task_id)
    assert shown["result"] == "later"
    assert shown["started_at"] >= shown["enqueued_at"] + 1.0 - 0.01


def test_a_dropped_file_with_a_future_not_before_is_put_off_then_run(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    start_worker()
    warm_up = app.enqueue("noop")
    wait_until(has_state(app, warm_up, "done"), timeout=30)
    not_before = time.time() + 2.0
    iso = datetime.fromtimestamp(not_before, UTC).isoformat()
    task = {"task": "echo", "args": ["on time"], "not_before": iso}
    drop(spool_root, "timed.json", json.dumps(task).encode())
    wait_until(has_state(app, "timed", "delayed"), timeout=1.5)
    wait_until(has_state(app, "timed", "done"), timeout=15)
    shown = app.show("timed")
    assert shown["result"] == "on time"
    assert shown["started_at"] >= not_before - 0.01
    assert shown["attempts"] == 1


def test_a_burst_worker_leaves_a_task_that_is_not_due(app: Spool, spool_root: Path) -> None:
    task_id = app.enqueue("echo", delay=3600)
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    assert app.state_of(task_id) == "delayed"


# ---- retries ---------------------------------------------------------------------------------


def test_a_failing_task_is_retried_with_backoff_until_it_succeeds(
    app: Spool, start_worker: Starter, tmp_path: Path
) -> None:
    task_id = app.enqueue("fail_until", args=[str(tmp_path / "runs"), 2])
    start_worker()
    wait_until(has_state(app, task_id, "done"), timeout=30)
    shown = app.show(task_id)
    assert shown["result"] == 3
    assert shown["attempts"] == 3
    history = shown["history"]
    assert [entry["attempt"] for entry in history] == [1, 2]
    assert all(entry["error"]["type"] == "RuntimeError" for entry in history)
    # retry_backoff 0.1 s in tests/spool.toml, doubling: >= 0.1 s, then >= 0.2 s
    assert history[1]["started_at"] - history[0]["finished_at"] >= 0.1 - 0.001
    assert shown["started_at"] - history[1]["finished_at"] >= 0.2 - 0.001


def test_backoff_doubles_is_capped_and_jitter_only_ever_adds_up_to_a_quarter() -> None:
    exact = RetryPolicy(max_retries=30, backoff_seconds=1.0, jitter=False)
    assert [exact.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert exact.delay(13) == 3600.0 and exact.delay(1000) == 3600.0  # 1 h cap, no overflow
    jittered = RetryPolicy(max_retries=30, backoff_seconds=1.0)
    rng = random.Random(7)
    for attempt in range(1, 16):
        base = exact.delay(attempt)
        delays = [jittered.delay(attempt, rng) for _ in range(200)]
        assert all(base <= d <= min(1.25 * base, 3600.0) for d in delays)
        if base < 3600.0:
            assert len(set(delays)) > 100  # spread, so retries of a burst do not align


def test_a_task_that_always_fails_ends_in_failed_with_every_attempt_in_its_history(
    app: Spool, start_worker: Starter
) -> None:
    task_id = app.enqueue("fail", args=["always"], max_retries=2)
    start_worker()
    wait_until(has_state(app, task_id, "failed"), timeout=30)
    shown = app.show(task_id)
    assert shown["attempts"] == 3
    assert shown["error"]["type"] == "RuntimeError"
    assert shown["error"]["message"] == "always"
    assert "RuntimeError: always" in shown["error"]["traceback"]
    assert [entry["attempt"] for entry in shown["history"]] == [1, 2, 3]
    for entry in shown["history"]:
        assert "RuntimeError: always" in entry["error"]["traceback"]


def test_max_retries_in_the_task_file_wins_over_the_tasks_own(
    app: Spool, start_worker: Starter
) -> None:
    task_id = app.enqueue("unreliable_no_retry", max_retries=2)  # the task says 0
    start_worker()
    wait_until(has_state(app, task_id, "failed"), timeout=30)
    assert app.show(task_id)["attempts"] == 3


def test_max_retries_of_the_task_wins_over_the_config(app: Spool, spool_root: Path) -> None:
    task_id = app.enqueue("unreliable_no_retry")  # the task says 0, the config 3
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    shown = app.show(task_id)
    assert shown["state"] == "failed"
    assert shown["attempts"] == 1
    assert len(shown["history"]) == 1


def test_max_retries_of_the_config_applies_when_nothing_else_says(
    app: Spool, start_worker: Starter
) -> None:
    task_id = app.enqueue("fail")  # tests/spool.toml: max_retries = 3
    start_worker()
    wait_until(has_state(app, task_id, "failed"), timeout=30)
    assert app.show(task_id)["attempts"] == 4


# ---- unique keys ----------------------------------------------------------------------------


def test_a_second_enqueue_with_a_pending_unique_key_returns_the_first_id_and_writes_nothing(
    app: Spool, spool_root: Path
) -> None:
    first = app.enqueue("echo", args=[1], unique_key="report-7")
    before = names(spool_root / "default" / "incoming")
    second = app.enqueue("echo", args=[2], unique_key="report-7")
    assert second == first
    assert names(spool_root / "default" / "incoming") == before
    assert len(before) == 1
    assert names(spool_root / "default" / "tmp") == []
    assert names(spool_root / "default" / "delayed") == []


def test_a_unique_key_is_free_again_once_its_task_finished(app: Spool, spool_root: Path) -> None:
    first = app.enqueue("echo", args=[1], unique_key="report-7")
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    assert app.state_of(first) == "done"
    second = app.enqueue("echo", args=[2], unique_key="report-7")
    assert second != first
    assert app.state_of(second) == "incoming"


# ---- signals ----------------------------------------------------------------------------------


def test_sigterm_finishes_the_running_task_claims_nothing_more_and_exits_0(
    app: Spool, start_worker: Starter
) -> None:
    running = app.enqueue("sleep_then_return", args=[2, "finished"])
    queued = app.enqueue("echo", args=["not yet"])
    worker = start_worker()
    wait_until(has_state(app, running, "processing"), timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert app.show(running)["state"] == "done"
    assert app.show(running)["result"] == "finished"
    assert app.state_of(queued) == "incoming"


def test_a_second_sigterm_puts_the_running_task_back_unchanged_and_exits_promptly(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path
) -> None:
    task_id = app.enqueue("sleep_then_return", args=[60])
    [name] = names(spool_root / "default" / "incoming")
    original = (spool_root / "default" / "incoming" / name).read_bytes()
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = start_worker(stderr=log.fileno())
    wait_until(has_state(app, task_id, "processing"), timeout=30)
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: "no more claims" in log_path.read_text(), timeout=10)
    stopped_at = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0
    assert time.monotonic() - stopped_at < 5
    assert names(spool_root / "default" / "incoming") == [name]
    assert (spool_root / "default" / "incoming" / name).read_bytes() == original
    assert app.show(task_id)["attempts"] == 0
    assert names(spool_root / "default" / "processing") == []


def test_sigquit_alone_puts_the_running_task_back_unchanged_and_exits_promptly(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    # What `spool up` sends on its second Ctrl-C: stop now, however many TERMs came before.
    task_id = app.enqueue("sleep_then_return", args=[60])
    [name] = names(spool_root / "default" / "incoming")
    worker = start_worker()
    wait_until(has_state(app, task_id, "processing"), timeout=30)
    stopped_at = time.monotonic()
    worker.send_signal(signal.SIGQUIT)
    assert worker.wait(timeout=10) == 0
    assert time.monotonic() - stopped_at < 5
    assert names(spool_root / "default" / "incoming") == [name]
    assert app.show(task_id)["attempts"] == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_idle_worker_exits_0_promptly_on_a_stop_signal(
    app: Spool, start_worker: Starter, signum: signal.Signals
) -> None:
    worker = start_worker()
    warm_up = app.enqueue("noop")
    wait_until(has_state(app, warm_up, "done"), timeout=30)
    worker.send_signal(signum)
    assert worker.wait(timeout=5) == 0


# ---- pick-up ----------------------------------------------------------------------------------


def test_files_dropped_while_no_worker_ran_run_when_one_starts(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    drop(spool_root, "early-1.json", b'{"task": "add", "args": [1, 1]}')
    drop(spool_root, "early-2.json", b'{"task": "add", "args": [2, 2]}')
    enqueued = app.enqueue("add", args=[3, 3])
    start_worker()
    for task_id in ("early-1", "early-2", enqueued):
        wait_until(has_state(app, task_id, "done"), timeout=30)
    assert [app.show(t)["result"] for t in ("early-1", "early-2", enqueued)] == [2, 4, 6]


def test_an_idle_worker_picks_up_a_new_task_at_once(app: Spool, start_worker: Starter) -> None:
    start_worker()
    warm_up = app.enqueue("noop")
    wait_until(has_state(app, warm_up, "done"), timeout=30)
    task_id = app.enqueue("echo", args=["quick"])
    wait_until(has_state(app, task_id, "done"), timeout=2.0)


EVENTS_ONLY_CONFIG = """
tasks = ["tests.tasks"]
[workers]
rescan_seconds = 3600
recover_seconds = 3600
"""


def test_an_idle_worker_is_woken_by_filesystem_events_not_by_polling(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker_with: Callable[[str], Starter]
) -> None:
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        start_worker_with(EVENTS_ONLY_CONFIG)(stderr=log.fileno())
    warm_up = app.enqueue("noop")  # found by the start-up scan
    wait_until(has_state(app, warm_up, "done"), timeout=30)
    enqueued = app.enqueue("echo", args=["via event"])
    wait_until(has_state(app, enqueued, "done"), timeout=2.0)
    drop(spool_root, "dropped.json", b'{"task": "echo", "args": ["dropped"]}')
    wait_until(has_state(app, "dropped", "done"), timeout=2.0)
    assert "filesystem events unavailable" not in log_path.read_text()  # no fallback polling


# ---- timeouts ----------------------------------------------------------------------------------


def test_a_handler_past_its_timeout_fails_with_timeout_and_the_worker_serves_on(
    app: Spool, spool_root: Path
) -> None:
    stuck = app.enqueue("short_timeout", max_retries=0)  # the task's timeout: 0.5 s
    after = app.enqueue("echo", args=["next"])
    started = time.monotonic()
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20  # the handler sleeps 30 s
    shown = app.show(stuck)
    assert shown["state"] == "failed"
    assert shown["error"]["type"] == "Timeout"
    assert "0.5" in shown["error"]["message"]
    assert app.show(after)["result"] == "next"


def test_a_timeout_in_the_task_file_stops_the_attempt(app: Spool, spool_root: Path) -> None:
    stuck = app.enqueue("sleep_then_return", args=[30], timeout=0.5, max_retries=0)
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    shown = app.show(stuck)
    assert shown["state"] == "failed"
    assert shown["error"]["type"] == "Timeout"
    assert shown["finished_at"] - shown["started_at"] < 10


def test_a_timeout_kills_the_subprocess_the_handler_waits_on(
    app: Spool, start_worker: Starter, tmp_path: Path
) -> None:
    pid_file = tmp_path / "sleeper.pid"
    task_id = app.enqueue(
        "sleep_in_subprocess_pid", args=[str(pid_file), 60], timeout=2.0, max_retries=0
    )
    worker = start_worker()
    wait_until(lambda: read_pid(pid_file) is not None, timeout=30)
    pid = read_pid(pid_file)
    assert pid is not None
    assert is_running(pid)
    wait_until(has_state(app, task_id, "failed"), timeout=30)
    assert app.show(task_id)["error"]["type"] == "Timeout"
    wait_until(lambda: not is_running(pid), timeout=5)
    assert worker.poll() is None


# ---- competition -------------------------------------------------------------------------------


def test_competing_workers_run_every_task_exactly_once(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    count = 2000
    tasks = [
        {"task": "record", "args": [str(log), f"t{i:04d}"], "id": f"t{i:04d}"} for i in range(count)
    ]
    ids = app.enqueue_many(tasks)
    workers = [start_worker("--burst") for _ in range(3)]
    for worker in workers:
        assert worker.wait(timeout=150) == 0
    queue = spool_root / "default"
    assert names(queue / "done") == sorted(f"{task_id}.json" for task_id in ids)
    for state in ("incoming", "delayed", "processing", "failed"):
        assert names(queue / state) == [], state
    runs = collections.Counter(recorded(log))
    assert set(runs) == set(ids)
    assert max(runs.values()) == 1
    worker_pids = {line.split()[1] for line in log.read_text().splitlines()}
    assert len(worker_pids) >= 2  # they did compete


def test_a_worker_that_cannot_record_an_outcome_keeps_it_writes_it_later_and_lives(
    app: Spool,
    spool_root: Path,
    tmp_path: Path,
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    done = spool_root / "default" / "done"
    task_id = app.enqueue("echo", args=["later"])
    done.rmdir()
    done.write_text("not a directory")  # every outcome write fails (ENOTDIR), even as root
    log = tmp_path / "worker.log"
    with open(log, "wb") as stderr:
        worker = start_worker(stderr=stderr.fileno())
    wait_until(lambda: b"cannot record the outcome" in log.read_bytes(), timeout=15)
    assert worker.poll() is None
    done.unlink()
    done.mkdir()
    wait_until(lambda: app.state_of(task_id) == "done", timeout=15)
    assert app.show(task_id)["result"] == "later"
