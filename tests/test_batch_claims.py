"""Batched claims (issue 20): a worker with a backlog claims up to `claim_batch` tasks at once
and hands them to its handler process in one message; an idle worker keeps the single-task path.

Every test runs real `spool worker` processes on a spool root in tmp_path, with a config of its
own (tests/spool.toml plus `claim_batch`), and real signals. A worker's claims are the entries
of processing/ named `<incoming name>@<worker id>`, the worker id holding the worker's pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from spool import Spool, handover
from spool.claim import Claim
from spool.cli import cli
from spool.config import load_settings
from spool.errors import ConfigError
from spool.faults import CRASH_ENV
from spool.layout import CANONICAL_RE, QueueDirs, cancelled_marker, split_processing
from tests.conftest import PROJECT_DIR, TEST_CONFIG, names, spool_command, wait_until
from tests.test_caps import most_at_once
from tests.test_rates import most_in_a_window
from tests.test_worker import is_running

Starter = Callable[..., subprocess.Popen[bytes]]
SLOW = 0.4  # seconds a slow task of a backlog runs: claims stay visible for a while


# ---- helpers ---------------------------------------------------------------------------------


def batch_config(tmp_path: Path, claim_batch: int | str | None) -> Path:
    """tests/spool.toml with `claim_batch` (TOML text) in its [workers] table (None: unset)."""
    text = TEST_CONFIG.read_text()
    if claim_batch is not None:
        text = text.replace("[workers]", f"[workers]\nclaim_batch = {claim_batch}")
    config = tmp_path / f"spool-batch-{len(list(tmp_path.glob('spool-batch-*')))}.toml"
    config.write_text(text)
    return config


def task_id_of(name: str) -> str:
    """The task id in an incoming/ (or processing/) name."""
    found = CANONICAL_RE.fullmatch(name)
    return found.group(3) if found else name.removesuffix(".json")


def claims_of(spool_root: Path, pid: int, queue: str = "default") -> list[str]:
    """Ids of the tasks the worker with process id `pid` holds claimed (visible) in processing/."""
    held = []
    for entry in names(spool_root / queue / "processing"):
        parts = split_processing(entry)
        if parts is not None and parts[1].rsplit("-", 2)[-2:-1] == [str(pid)]:
            held.append(task_id_of(parts[0]))
    return held


@dataclass
class Most:
    """The most claims a worker was seen holding at once: all of them, and those of tasks that
    had not started yet (an ended task's claim stays visible until its outcome is written,
    which happens while the next task runs: see spool.recorder)."""

    held: int = 0
    unstarted: int = 0


def most_claims(
    spool_root: Path,
    pid: int,
    until: Callable[[], object],
    log: Path | None = None,
    timeout: float = 10.0,
) -> Most:
    """Sample the claims of worker `pid` every few ms until `until()` holds (tasks that started
    are those `note_start_then_sleep` noted in `log`)."""
    most = Most()

    def sample() -> object:
        held = claims_of(spool_root, pid)
        ran = set(started_values(log)) if log is not None else set()  # read after: no overcount
        most.held = max(most.held, len(held))
        most.unstarted = max(most.unstarted, len(set(held) - ran))
        return until()

    wait_until(sample, timeout=timeout, interval=0.005)
    return most


def waiting_ids(spool_root: Path, queue: str = "default") -> list[str]:
    return [task_id_of(name) for name in names(spool_root / queue / "incoming")]


def started(log: Path) -> list[tuple[str, int]]:
    """(value, handler pid) of each start `note_start_then_sleep` noted in `log`, in order."""
    if not log.exists():
        return []
    rows = [line.split() for line in log.read_text().splitlines()]
    return [(row[0], int(row[1])) for row in rows if len(row) == 2]


def started_values(log: Path) -> list[str]:
    return [value for value, _ in started(log)]


def slow_tasks(log: Path, count: int, seconds: float = SLOW, prefix: str = "t") -> list[dict]:
    """`count` tasks that note their start in `log` under their own id, then sleep."""
    return [
        {
            "task": "note_start_then_sleep",
            "args": [str(log), f"{prefix}{i}", seconds],
            "id": f"{prefix}{i}",
        }
        for i in range(count)
    ]


def all_in(app: Spool, ids: list[str], state: str) -> Callable[[], bool]:
    return lambda: all(app.state_of(task_id) == state for task_id in ids)


def lost_of(shown: dict) -> int:
    return int(shown.get("lost") or 0)


def assert_ran_once_cleanly(app: Spool, task_id: str) -> None:
    """Done on its first counted attempt: no lost attempt, no earlier attempt in its history."""
    shown = app.show(task_id)
    assert shown["state"] == "done", (task_id, shown["state"])
    assert (shown["attempts"], lost_of(shown)) == (1, 0), (task_id, shown)
    assert not shown.get("history"), (task_id, shown.get("history"))


def invoke(spool_root: Path, *args: str, config: Path = TEST_CONFIG) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--root", str(spool_root), "--config", str(config), *args])
    return result.exit_code, result.output


# ---- the setting -------------------------------------------------------------------------


def test_claim_batch_is_read_from_the_workers_table_and_defaults_to_eight(tmp_path: Path) -> None:
    assert load_settings(None, str(batch_config(tmp_path, None)), env={}).claim_batch == 8
    assert load_settings(None, str(batch_config(tmp_path, 3)), env={}).claim_batch == 3
    assert load_settings(None, str(batch_config(tmp_path, 1)), env={}).claim_batch == 1


@pytest.mark.parametrize("value", ["0", "-2", "'four'", "2.5", "true"])
def test_a_claim_batch_that_is_not_a_positive_integer_is_a_one_line_config_error(
    tmp_path: Path, spool_root: Path, value: str
) -> None:
    config = batch_config(tmp_path, value)
    with pytest.raises(ConfigError, match="claim_batch") as info:
        load_settings(None, str(config), env={})
    assert str(config) in str(info.value)
    assert "\n" not in str(info.value)
    worker = subprocess.run(
        spool_command(spool_root, "worker", "--burst", config=config),
        cwd=PROJECT_DIR,
        env={**os.environ, "SPOOL_ROOT": str(spool_root)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert worker.returncode in (1, 2), worker.stderr
    assert "claim_batch" in worker.stderr
    assert len(worker.stderr.strip().splitlines()) == 1, worker.stderr
    assert "Traceback" not in worker.stderr


# ---- how many at once ----------------------------------------------------------------------


def test_a_worker_with_a_backlog_holds_claim_batch_claims_at_once(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 8))
    worker = start_worker(config=batch_config(tmp_path, 4))
    most = most_claims(spool_root, worker.pid, all_in(app, ids, "done"), log, timeout=15)
    assert most.held >= 4
    assert 3 <= most.unstarted <= 4
    for task_id in ids:
        assert_ran_once_cleanly(app, task_id)


def test_a_batch_takes_the_first_tasks_in_priority_order_and_runs_them_in_that_order(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    tasks = slow_tasks(log, 8, seconds=0.2)
    for task, priority in zip(tasks, [0, 5, 0, 9, 5, 0, 9, 0], strict=True):
        task["priority"] = priority
    app.enqueue_many(tasks)
    worker = start_worker(config=batch_config(tmp_path, 4))
    wait_until(lambda: len(claims_of(spool_root, worker.pid)) == 4, timeout=15)
    assert sorted(claims_of(spool_root, worker.pid)) == ["t1", "t3", "t4", "t6"]
    wait_until(lambda: len(started(log)) == 8, timeout=15)
    assert started_values(log) == ["t3", "t6", "t1", "t4", "t0", "t2", "t5", "t7"]


def test_a_worker_with_claim_batch_one_never_holds_more_than_one_claim(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 6, seconds=0.2))
    worker = start_worker(config=batch_config(tmp_path, 1))
    most = most_claims(spool_root, worker.pid, all_in(app, ids, "done"), log, timeout=15)
    assert most.unstarted <= 1
    assert most.held <= 2  # (the one claimed, and the one before it while its outcome is written)
    for task_id in ids:
        assert_ran_once_cleanly(app, task_id)


def test_by_default_a_worker_with_a_backlog_claims_eight_at_once(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 10, seconds=0.25))
    worker = start_worker(config=batch_config(tmp_path, None))
    most = most_claims(spool_root, worker.pid, all_in(app, ids, "done"), log, timeout=15)
    assert most.held >= 8
    assert 7 <= most.unstarted <= 8


def test_a_task_enqueued_to_an_idle_worker_runs_alone_and_at_once(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    worker = start_worker(config=batch_config(tmp_path, 4))
    warm_up = app.enqueue("noop")
    wait_until(lambda: app.state_of(warm_up) == "done", timeout=30)
    task_id = app.enqueue("sleep_then_return", args=[SLOW, "alone"])
    done = lambda: app.state_of(task_id) == "done"  # noqa: E731
    assert most_claims(spool_root, worker.pid, done, timeout=5).held == 1
    shown = app.show(task_id)
    assert shown["result"] == "alone"
    assert shown["started_at"] - shown["enqueued_at"] < 0.5  # picked up, not left for a rescan


def test_capped_and_rated_tasks_mixed_into_a_backlog_keep_their_limits_and_run_once(
    app: Spool, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "capped.log"
    tasks: list[dict] = []
    for _ in range(8):
        tasks.append({"task": "sleep_then_return", "args": [0.1]})
        tasks.append({"task": "capped_alone", "args": [str(log), 0.1]})  # concurrency 1
        tasks += [{"task": "rated"}, {"task": "rated"}]  # 10 a second
    ids = app.enqueue_many(tasks)
    config = batch_config(tmp_path, 4)
    start_worker(config=config)
    start_worker(config=config)
    wait_until(all_in(app, ids, "done"), timeout=30)
    rows = [line.split() for line in log.read_text().splitlines()]
    intervals = [(float(start), float(end)) for start, end in rows]
    assert len(intervals) == 8
    assert most_at_once(intervals) == 1
    rated = [i for i, task in zip(ids, tasks, strict=True) if task["task"] == "rated"]
    starts = sorted(float(app.show(i)["started_at"]) for i in rated)
    assert most_in_a_window(starts, 1.0) <= 12
    assert {(int(app.show(i)["attempts"]), lost_of(app.show(i))) for i in ids} == {(1, 0)}


# ---- a batch cut short: stop, timeout, handler process killed, worker killed ---------------------


def test_sigterm_in_a_batch_finishes_the_running_task_and_puts_the_rest_back_unchanged(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 4, seconds=1.0))
    incoming = spool_root / "default" / "incoming"
    original = {name: (incoming / name).read_bytes() for name in names(incoming)}
    config = batch_config(tmp_path, 4)
    worker = start_worker(config=config)
    wait_until(lambda: len(claims_of(spool_root, worker.pid)) == 4, timeout=15)
    wait_until(lambda: started(log), timeout=10)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    [running] = started_values(log)
    shown = app.show(running)
    assert (shown["state"], shown["result"], shown["attempts"]) == ("done", running, 1)
    rest = [task_id for task_id in ids if task_id != running]
    assert sorted(waiting_ids(spool_root)) == sorted(rest)
    for name in names(incoming):
        assert (incoming / name).read_bytes() == original[name], name  # unchanged
        assert app.show(task_id_of(name))["attempts"] == 0
    assert names(spool_root / "default" / "processing") == []
    later = start_worker("--burst", config=config)
    assert later.wait(timeout=20) == 0
    for task_id in rest:
        assert_ran_once_cleanly(app, task_id)
    assert started_values(log)[0] == running and sorted(started_values(log)[1:]) == sorted(rest)


def test_a_timeout_in_a_batch_counts_for_that_task_only_and_the_rest_run_after_it(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    first, after_1, after_2 = slow_tasks(log, 3, seconds=0.3)
    first["priority"], after_1["priority"], after_2["priority"] = 3, 1, 0
    stuck = {
        "task": "sleep_then_return",
        "args": [30],
        "timeout": 0.5,
        "max_retries": 0,
        "id": "stuck",
        "priority": 2,
    }
    ids = app.enqueue_many([first, stuck, after_1, after_2])
    worker = start_worker(config=batch_config(tmp_path, 4))
    wait_until(lambda: len(claims_of(spool_root, worker.pid)) == 4, timeout=15)  # one batch
    wait_until(lambda: app.state_of("stuck") == "failed", timeout=15)
    shown = app.show("stuck")
    assert shown["error"]["type"] == "Timeout"
    assert (shown["attempts"], lost_of(shown)) == (1, 0)
    wait_until(all_in(app, [i for i in ids if i != "stuck"], "done"), timeout=15)
    for task_id in ("t0", "t1", "t2"):
        assert_ran_once_cleanly(app, task_id)
    assert started_values(log) == ["t0", "t1", "t2"]  # in priority order, each once
    assert worker.poll() is None


def test_a_handler_process_killed_in_a_batch_loses_only_the_running_task(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 6, seconds=1.0))
    worker = start_worker(config=batch_config(tmp_path, 4))
    wait_until(lambda: len(claims_of(spool_root, worker.pid)) == 4, timeout=15)
    wait_until(lambda: started(log), timeout=10)
    [(running, handler_pid)] = started(log)
    os.kill(handler_pid, signal.SIGKILL)
    wait_until(all_in(app, ids, "done"), timeout=30)
    assert worker.poll() is None
    shown = app.show(running)
    assert (shown["attempts"], lost_of(shown)) == (2, 1)
    assert [entry["error"]["type"] for entry in shown["history"]] == ["WorkerLost"]
    for task_id in ids:
        if task_id != running:
            assert_ran_once_cleanly(app, task_id)
    assert sorted(started_values(log)) == sorted([*ids, running])  # each once, the lost twice
    follow_up = app.enqueue("echo", args=["alive"])
    wait_until(lambda: app.state_of(follow_up) == "done", timeout=10)


def test_a_worker_killed_in_a_batch_leaves_every_task_to_end_once_and_unstarted_ones_uncounted(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 6))
    config = batch_config(tmp_path, 4)
    doomed = start_worker(config=config)
    wait_until(lambda: len(started(log)) >= 2, timeout=15)  # one ended, the next one runs
    claimed = set(claims_of(spool_root, doomed.pid))
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    handler_pid = started(log)[0][1]
    wait_until(lambda: not is_running(handler_pid), timeout=5)  # it dies with its worker
    ran_before = set(started_values(log))
    unstarted = claimed - ran_before
    assert unstarted, (claimed, ran_before)  # the kill came in the middle of a batch
    start_worker(config=config)
    queue = spool_root / "default"
    wait_until(lambda: names(queue / "done") == sorted(f"{i}.json" for i in ids), timeout=30)
    wait_until(lambda: not any("@" in entry for entry in os.listdir(queue / "processing")), 10)
    assert names(queue / "incoming") == [] and names(queue / "failed") == []
    shown = {task_id: app.show(task_id) for task_id in ids}
    assert all(lost_of(s) <= 1 for s in shown.values()), shown
    assert sum(1 for s in shown.values() if lost_of(s) >= 1) <= 2, shown
    for task_id in ids:
        if task_id not in ran_before:
            assert_ran_once_cleanly(app, task_id)


def test_a_worker_killed_before_handing_its_batch_over_leaves_every_task_uncounted(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 6, seconds=0.05))
    config = batch_config(tmp_path, 4)
    os.environ[CRASH_ENV] = f"before-handing-over:{tmp_path / 'crashed'}"
    try:  # the worker kills itself with 4 claims, before its handler process has any
        doomed = start_worker(config=config)
    finally:
        del os.environ[CRASH_ENV]
    assert doomed.wait(timeout=20) == -signal.SIGKILL
    assert len(claims_of(spool_root, doomed.pid)) == 4 and started(log) == []
    start_worker(config=config)
    wait_until(all_in(app, ids, "done"), timeout=30)
    assert sorted(started_values(log)) == sorted(ids)
    for task_id in ids:
        assert_ran_once_cleanly(app, task_id)


# ---- order and cancel ------------------------------------------------------------------------


def test_a_higher_priority_task_waits_only_for_the_tasks_already_handed_over(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 10, seconds=0.3))
    start_worker(config=batch_config(tmp_path, 4))
    wait_until(lambda: started(log), timeout=15)
    urgent = app.enqueue("note_start_then_sleep", args=[str(log), "urgent", 0.0], priority=9)
    behind = waiting_ids(spool_root)  # still in incoming/ once the urgent task is there
    assert urgent in behind and len(behind) > 1
    wait_until(all_in(app, [*ids, urgent], "done"), timeout=20)
    order = started_values(log)
    for task_id in behind:
        if task_id != urgent:
            assert order.index("urgent") < order.index(task_id), (order, behind)


def test_cancel_of_a_batch_member_that_has_not_started_ends_it_cancelled_and_the_worker_goes_on(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    first, waiting, last = slow_tasks(log, 3, seconds=1.5)
    first["priority"], waiting["priority"], last["priority"] = 2, 1, 0
    waiting["args"][2] = last["args"][2] = 0.1
    app.enqueue_many([first, waiting, last])
    worker = start_worker(config=batch_config(tmp_path, 4))
    wait_until(lambda: len(claims_of(spool_root, worker.pid)) == 3, timeout=15)
    wait_until(lambda: started_values(log) == ["t0"], timeout=10)
    code, output = invoke(spool_root, "cancel", "t1")
    assert (code, output) == (0, "cancelled t1\n"), output
    shown = app.show("t1")
    assert shown["state"] == "failed"
    assert shown["error"]["type"] == "Cancelled"
    dirs = QueueDirs(spool_root, "default")
    assert (dirs.failed / cancelled_marker("t1.json")).exists()
    wait_until(all_in(app, ["t0", "t2"], "done"), timeout=10)
    assert started_values(log) == ["t0", "t2"]  # the cancelled one never started
    assert worker.poll() is None


# ---- output and burst --------------------------------------------------------------------------


def test_each_task_of_a_batch_keeps_only_its_own_output(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    ids = app.enqueue_many([{"task": "say", "args": [word]} for word in words])
    config = batch_config(tmp_path, 4)
    assert start_worker("--burst", config=config).wait(timeout=30) == 0
    for task_id, word in zip(ids, words, strict=True):
        assert app.show(task_id)["result"] == word
        assert invoke(spool_root, "logs", task_id, config=config) == (0, f"{word}\n")


def test_a_burst_worker_drains_a_backlog_in_batches_and_exits_0(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 12, seconds=0.15))
    burst = start_worker("--burst", config=batch_config(tmp_path, 4))
    most = most_claims(spool_root, burst.pid, lambda: burst.poll() is not None, log, timeout=30)
    assert burst.returncode == 0
    assert most.held >= 4
    assert 3 <= most.unstarted <= 4
    queue = spool_root / "default"
    assert names(queue / "done") == sorted(f"{i}.json" for i in ids)
    for state in ("incoming", "processing", "failed"):
        assert names(queue / state) == [], state
    for task_id in ids:
        assert_ran_once_cleanly(app, task_id)


def test_the_outcome_of_every_task_of_a_batch_is_its_own(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    tasks = [
        {"task": "add", "args": [1, 2], "priority": 3},
        {"task": "fail_for_good", "args": ["bad address"], "priority": 2},
        {"task": "echo", "args": [{"k": [1, 2]}], "priority": 1},
        {"task": "fail", "args": ["boom"], "max_retries": 0, "priority": 0},
    ]
    ids = app.enqueue_many(tasks)
    assert start_worker("--burst", config=batch_config(tmp_path, 4)).wait(timeout=30) == 0
    added, refused, echoed, failed = (app.show(task_id) for task_id in ids)
    assert (added["state"], added["result"]) == ("done", 3)
    assert (refused["state"], refused["error"]["type"]) == ("failed", "Fail")
    assert refused["error"]["message"] == "bad address"
    assert (echoed["state"], echoed["result"]) == ("done", {"k": [1, 2]})
    assert (failed["state"], failed["error"]["message"]) == ("failed", "boom")
    assert {(s["attempts"], lost_of(s)) for s in (added, refused, echoed, failed)} == {(1, 0)}


# ---- the next batch, handed over while the last task of a batch runs --------------------------


def test_the_next_batch_is_handed_over_while_the_last_task_of_a_batch_runs(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    processing = spool_root / "default" / "processing"
    last = {"task": "sleep_then_list", "args": [str(processing), 0.3], "id": "t3"}
    following = slow_tasks(log, 4, seconds=0.05, prefix="u")
    ids = app.enqueue_many([*slow_tasks(log, 3, seconds=0.05), last, *following])
    assert start_worker("--burst", config=batch_config(tmp_path, 4)).wait(timeout=30) == 0
    seen = app.show("t3")["result"]  # what t3 saw claimed as it ended: the next batch with it
    assert sorted(task_id_of(split_processing(entry)[0]) for entry in seen) == [
        "t3",
        "u0",
        "u1",
        "u2",
        "u3",
    ]
    assert started_values(log) == ["t0", "t1", "t2", "u0", "u1", "u2", "u3"]
    for task_id in ids:
        assert_ran_once_cleanly(app, task_id)


def hand_over_the_next_batch(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> tuple[subprocess.Popen[bytes], Path, int]:
    """A worker (claim_batch 4) whose first batch's last task, t3, runs for 3 s, with the next
    batch (u0 to u3) handed over behind it: (the worker, the starts log, t3's handler pid)."""
    log = tmp_path / "starts.log"
    first = slow_tasks(log, 4, seconds=0.05)
    first[3]["args"][2] = 3.0
    app.enqueue_many([*first, *slow_tasks(log, 4, seconds=0.05, prefix="u")])
    worker = start_worker(config=batch_config(tmp_path, 4))
    wait_until(lambda: started_values(log) == ["t0", "t1", "t2", "t3"], timeout=15)
    following = {"u0", "u1", "u2", "u3"}
    wait_until(lambda: following <= set(claims_of(spool_root, worker.pid)), timeout=2)
    assert started_values(log)[-1] == "t3"  # (it still runs: none of them started)
    return worker, log, started(log)[-1][1]


def test_sigterm_while_the_next_batch_waits_puts_it_back_unchanged(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    worker, log, _ = hand_over_the_next_batch(app, spool_root, tmp_path, start_worker)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    shown = app.show("t3")
    assert (shown["state"], shown["attempts"]) == ("done", 1)
    assert sorted(waiting_ids(spool_root)) == ["u0", "u1", "u2", "u3"]
    assert all(app.show(f"u{i}")["attempts"] == 0 for i in range(4))
    assert names(spool_root / "default" / "processing") == []
    assert started_values(log) == ["t0", "t1", "t2", "t3"]  # none of the next batch started
    assert start_worker("--burst", config=batch_config(tmp_path, 4)).wait(timeout=20) == 0
    for i in range(4):
        assert_ran_once_cleanly(app, f"u{i}")


def test_a_handler_process_killed_while_the_next_batch_waits_loses_only_the_running_task(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    worker, log, handler_pid = hand_over_the_next_batch(app, spool_root, tmp_path, start_worker)
    os.kill(handler_pid, signal.SIGKILL)
    following = [f"u{i}" for i in range(4)]
    wait_until(all_in(app, ["t3", *following], "done"), timeout=30)
    assert worker.poll() is None
    shown = app.show("t3")
    assert (shown["attempts"], lost_of(shown)) == (2, 1)
    for task_id in following:
        assert_ran_once_cleanly(app, task_id)
    assert started_values(log).count("t3") == 2


def test_a_worker_killed_while_the_next_batch_waits_leaves_it_uncounted(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    worker, log, handler_pid = hand_over_the_next_batch(app, spool_root, tmp_path, start_worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    wait_until(lambda: not is_running(handler_pid), timeout=5)  # it dies with its worker
    start_worker(config=batch_config(tmp_path, 4))
    following = [f"u{i}" for i in range(4)]
    wait_until(all_in(app, ["t3", *following], "done"), timeout=30)
    shown = app.show("t3")
    assert (shown["attempts"], lost_of(shown)) == (2, 1)  # it was running: one lost attempt
    for task_id in following:
        assert_ran_once_cleanly(app, task_id)
        assert started_values(log).count(task_id) == 1


# ---- slow tasks, at_most_once, the batch list ------------------------------------------------


def test_a_batch_still_running_after_a_second_hands_back_the_tasks_that_have_not_started(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 8, seconds=0.4))
    worker = start_worker(config=batch_config(tmp_path, 8))
    wait_until(lambda: len(claims_of(spool_root, worker.pid)) == 8, timeout=15)
    assert waiting_ids(spool_root) == []
    wait_until(lambda: waiting_ids(spool_root), timeout=5, interval=0.01)  # 3 ran in a second
    handed_back = waiting_ids(spool_root)
    assert not set(handed_back) & set(started_values(log))
    wait_until(all_in(app, ids, "done"), timeout=20)
    assert sorted(started_values(log)) == sorted(ids)  # each started once
    for task_id in ids:
        assert_ran_once_cleanly(app, task_id)


def test_at_most_once_tasks_never_share_a_batch(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    ids = app.enqueue_many([{"task": "sleep_at_most_once", "args": [0.2]} for _ in range(4)])
    worker = start_worker(config=batch_config(tmp_path, 4))
    most = most_claims(spool_root, worker.pid, all_in(app, ids, "done"), timeout=15)
    assert most.held <= 2  # (the one running, and the one before it while its outcome is written)


def test_recovery_counts_only_the_first_claim_left_of_what_a_dead_worker_handed_over(
    tmp_path: Path,
) -> None:
    dirs = QueueDirs(tmp_path, "default")
    dirs.processing.mkdir(parents=True)
    (tmp_path / ".workers").mkdir()
    claims = [Claim(dirs, f"{name}.json", "w-1-aa") for name in "abcdefg"]
    listed = handover.HandOverList(tmp_path, "w-1-aa")
    listed.write(claims)  # an earlier, longer batch
    listed.write(claims[:5])  # this one: padded over the last one, no stale line stays
    for taken in claims[1:]:
        taken.path.touch()  # a's claim is gone (its outcome is written); f, g: claimed since
    assert handover.maybe_started(tmp_path, "w-1-aa") == {("default", "b.json")}
    claims[1].path.unlink()  # b's outcome written too: c was running
    assert handover.maybe_started(tmp_path, "w-1-aa") == {("default", "c.json")}
    listed.write([])  # nothing handed over (a worker that just started)
    assert handover.maybe_started(tmp_path, "w-1-aa") == set()
    assert handover.maybe_started(tmp_path, "w-2-bb") is None  # no list: every claim may have


def test_a_quick_task_behind_a_slow_one_in_a_batch_goes_back_for_another_worker(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: Starter
) -> None:
    log = tmp_path / "starts.log"
    slow, quick = slow_tasks(log, 2, seconds=6.0)
    slow["priority"], quick["args"][2] = 9, 0.0
    app.enqueue_many([slow, quick])
    config = batch_config(tmp_path, 4)
    first = start_worker(config=config)
    wait_until(lambda: len(claims_of(spool_root, first.pid)) == 2, timeout=15, interval=0.005)
    wait_until(lambda: waiting_ids(spool_root) == ["t1"], timeout=3)  # taken back at once
    assert started_values(log) == ["t0"]
    start_worker(config=config)
    wait_until(lambda: app.state_of("t1") == "done", timeout=10)
    assert app.state_of("t0") == "processing"  # still running on the first worker
    assert_ran_once_cleanly(app, "t1")
