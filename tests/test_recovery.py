"""Recovery: tasks outlive the death of a worker or of its handler process.

A dead worker's claims go back to the queue (attempts + 1) and run again; a handler process
that dies is a failed attempt, retried like any other; nothing is orphaned or lost.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from spool import Spool
from spool.cli import cli
from tests.conftest import TEST_CONFIG, drop_into, has_started, names, wait_until
from tests.test_worker import has_state, is_running, read_pid

Starter = Callable[..., subprocess.Popen[bytes]]


def live_worker_pids(spool_root: Path) -> list[int]:
    """Pids of the workers `spool status --json` lists as alive."""
    shown = CliRunner().invoke(
        cli, ["--root", str(spool_root), "--config", str(TEST_CONFIG), "status", "--json"]
    )
    assert shown.exit_code == 0, shown.output
    return sorted(int(worker["pid"]) for worker in json.loads(shown.output)["workers"])


def kill_hard(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def kill_hard_once_started(app: Spool, task_id: str, worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL `worker` once its handler runs `task_id` (a claim not yet handed over is no
    attempt: recovery puts it back unchanged)."""
    wait_until(has_started(app.root, task_id), timeout=30)
    kill_hard(worker)


def test_the_task_of_a_killed_worker_runs_again_on_a_restarted_worker(
    app: Spool, start_worker: Starter
) -> None:
    task_id = app.enqueue("sleep_then_return", args=[1.0, "survived"])
    kill_hard_once_started(app, task_id, start_worker())
    start_worker()
    wait_until(has_state(app, task_id, "done"), timeout=15)
    shown = app.show(task_id)
    assert shown["result"] == "survived"
    assert shown["attempts"] == 2
    assert [entry["error"]["type"] for entry in shown["history"]] == ["WorkerLost"]


def test_the_task_of_a_killed_worker_is_recovered_by_a_running_worker_within_seconds(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    task_id = app.enqueue("sleep_then_return", args=[1.0, "survived"])
    first = start_worker()
    wait_until(has_started(spool_root, task_id), timeout=30)
    second = start_worker()
    wait_until(lambda: second.pid in live_worker_pids(spool_root), timeout=30)
    kill_hard(first)
    wait_until(has_state(app, task_id, "done"), timeout=10)
    shown = app.show(task_id)
    assert shown["attempts"] == 2
    assert f"-{second.pid}-" in shown["worker"]


def test_a_handler_process_that_exits_hard_once_is_retried_and_the_worker_survives(
    app: Spool, start_worker: Starter, tmp_path: Path
) -> None:
    task_id = app.enqueue("exit_hard_once", args=[str(tmp_path / "marker")])
    worker = start_worker()
    wait_until(has_state(app, task_id, "done"), timeout=30)
    shown = app.show(task_id)
    assert shown["result"] == "second run"
    assert shown["attempts"] == 2
    assert shown["history"][0]["error"]["type"] == "WorkerLost"
    assert "exited with code 9" in shown["history"][0]["error"]["message"]
    assert worker.poll() is None


@pytest.mark.parametrize(("handler", "how"), [("kill_self", "SIGKILL"), ("exit_hard", "code 3")])
def test_a_task_that_always_kills_its_handler_process_fails_as_worker_lost(
    app: Spool, start_worker: Starter, handler: str, how: str
) -> None:
    task_id = app.enqueue(handler, max_retries=2)
    worker = start_worker()
    wait_until(has_state(app, task_id, "failed"), timeout=30)
    shown = app.show(task_id)
    assert shown["attempts"] == 3
    assert shown["error"]["type"] == "WorkerLost"
    assert how in shown["error"]["message"]
    assert [entry["error"]["type"] for entry in shown["history"]] == ["WorkerLost"] * 3
    assert worker.poll() is None
    follow_up = app.enqueue("echo", args=["alive"])
    wait_until(has_state(app, follow_up, "done"), timeout=10)


def test_the_handler_process_dies_with_a_killed_worker(
    app: Spool, start_worker: Starter, tmp_path: Path
) -> None:
    pid_file = tmp_path / "handler.pid"
    app.enqueue("write_pid_then_sleep", args=[str(pid_file), 60])
    worker = start_worker()
    wait_until(lambda: read_pid(pid_file) is not None, timeout=30)
    handler_pid = read_pid(pid_file)
    assert handler_pid is not None
    assert is_running(handler_pid)
    kill_hard(worker)
    wait_until(lambda: not is_running(handler_pid), timeout=5)


def test_status_lists_only_live_workers_after_one_was_killed_mid_task(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    task_id = app.enqueue("sleep_then_return", args=[1.0])
    doomed = start_worker()
    wait_until(has_state(app, task_id, "processing"), timeout=30)
    survivor = start_worker()
    wait_until(lambda: live_worker_pids(spool_root) == sorted([doomed.pid, survivor.pid]), 30)
    kill_hard(doomed)
    assert live_worker_pids(spool_root) == [survivor.pid]
    wait_until(has_state(app, task_id, "done"), timeout=10)
    wait_until(lambda: names(spool_root / "default" / "processing") == [], timeout=5)
    assert live_worker_pids(spool_root) == [survivor.pid]


def test_processes_started_by_the_handler_of_a_killed_worker_are_killed_on_recovery(
    app: Spool, start_worker: Starter, tmp_path: Path, spool_root: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    task_id = app.enqueue("sleep_in_subprocess_pid", args=[str(pid_file), 60])
    worker = start_worker()
    wait_until(lambda: read_pid(pid_file) is not None, timeout=30)
    grandchild = read_pid(pid_file)
    assert grandchild is not None and is_running(grandchild)
    kill_hard(worker)
    log = tmp_path / "survivor.log"
    with open(log, "ab") as out:  # its recovery pass finds the dead worker and kills what it left
        start_worker(stderr=out.fileno())
    wait_until(lambda: not is_running(grandchild), timeout=15)
    wait_until(has_state(app, task_id, "processing"), timeout=15)  # and the task runs again
    dead = f"-{worker.pid}-"  # (then its files are reaped: that kills nothing more)
    wait_until(lambda: not [n for n in names(spool_root / ".workers") if dead in n], timeout=30)
    assert log.read_text().count("killed the processes left by dead worker") == 1


# ---- lost attempts: at-least-once whatever max_retries, and a bound for poison pills ----------


def drop_task(spool_root: Path, name: str, task: dict[str, object]) -> None:
    incoming = spool_root / "default" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    drop_into(incoming, name, json.dumps(task).encode())


def dies_or_fails(worker: subprocess.Popen[bytes], app: Spool, task_id: str) -> Callable[[], bool]:
    return lambda: worker.poll() is not None or app.state_of(task_id) == "failed"


def test_a_task_without_retries_whose_worker_is_killed_runs_again_on_another_worker(
    app: Spool, start_worker: Starter
) -> None:
    task_id = app.enqueue("sleep_without_retries", args=[1.0, "ran"])
    kill_hard_once_started(app, task_id, start_worker())
    start_worker()
    wait_until(has_state(app, task_id, "done"), timeout=30)
    shown = app.show(task_id)
    assert shown["result"] == "ran"
    assert (shown["attempts"], shown["lost"]) == (2, 1)
    assert [entry["error"]["type"] for entry in shown["history"]] == ["WorkerLost"]
    assert shown["history"][0]["lost"] is True


def test_a_poison_pill_that_kills_every_worker_ends_in_failed_after_max_lost_losses(
    app: Spool, start_worker: Starter
) -> None:
    task_id = app.enqueue("kill_worker")  # max_retries=0: the losses must not be retries
    for _ in range(4):  # three workers die of it; the fourth's recovery gives up on it
        wait_until(dies_or_fails(start_worker(), app, task_id), timeout=30)
        if app.state_of(task_id) == "failed":
            break
    shown = app.show(task_id)
    assert (shown["attempts"], shown["lost"]) == (3, 3)
    assert shown["error"]["type"] == "WorkerLost"
    assert "3 attempts lost (max_lost 3)" in shown["error"]["message"]
    assert [entry["error"]["type"] for entry in shown["history"]] == ["WorkerLost"] * 3


def test_a_handler_process_killed_every_time_fails_after_the_task_files_max_lost(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    drop_task(spool_root, "pill.json", {"id": "pill", "task": "kill_self", "max_lost": 2,
                                        "max_retries": 0})  # fmt: skip
    worker = start_worker()
    wait_until(has_state(app, "pill", "failed"), timeout=30)
    shown = app.show("pill")
    assert (shown["attempts"], shown["lost"], shown["max_retries"]) == (2, 2, 0)
    assert "killed by SIGKILL" in shown["error"]["message"]
    assert "max_lost 2" in shown["error"]["message"]
    assert all(entry["lost"] for entry in shown["history"]) and len(shown["history"]) == 2
    assert worker.poll() is None


def test_an_at_most_once_task_goes_to_failed_after_its_first_lost_attempt(
    app: Spool, start_worker: Starter
) -> None:
    task_id = app.enqueue("sleep_at_most_once", args=[30])
    kill_hard_once_started(app, task_id, start_worker())
    start_worker()
    wait_until(has_state(app, task_id, "failed"), timeout=30)
    shown = app.show(task_id)
    assert (shown["attempts"], shown["lost"]) == (1, 1)
    assert shown["error"]["type"] == "WorkerLost"
    assert "at_most_once" in shown["error"]["message"]


def test_max_lost_comes_from_the_configs_defaults(
    app: Spool, start_worker: Starter, tmp_path: Path
) -> None:
    config = tmp_path / "spool.toml"
    config.write_text(TEST_CONFIG.read_text().replace("[defaults]", "[defaults]\nmax_lost = 1"))
    task_id = app.enqueue("kill_self")
    start_worker(config=config)
    wait_until(has_state(app, task_id, "failed"), timeout=30)
    shown = app.show(task_id)
    assert (shown["attempts"], shown["lost"]) == (1, 1)
    assert "max_lost 1" in shown["error"]["message"]
