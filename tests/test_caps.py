"""Concurrency caps: O_EXCL seat files held by running attempts across real workers, freed
when the attempt ends, and freed by the recovery of a SIGKILLed worker's claim."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from spool import Spool
from spool.envelope import parse_rate
from spool.workflows import rates
from spool.workflows.caps import Cap, free_seats_of, key_dir, seats_taken, take_seat
from spool.workflows.rates import Limit, reserve
from tests.conftest import drop_into, has_started, run_burst, wait_until

StartWorker = Callable[..., subprocess.Popen[bytes]]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = most = 0
    for _, change in events:  # (an end sorts before a start at the same instant)
        running += change
        most = max(most, running)
    return most


def test_a_cap_has_as_many_seats_as_its_limit_and_a_freed_seat_is_taken_again(
    tmp_path: Path,
) -> None:
    cap = Cap("printer", 2)
    first = take_seat(tmp_path, cap, "a", "w1")
    assert first is not None and take_seat(tmp_path, cap, "b", "w1") is not None
    assert take_seat(tmp_path, cap, "c", "w2") is None
    assert free_seats_of(tmp_path, "a", "w1", now=0.0) == 1  # w1 died holding it
    assert take_seat(tmp_path, cap, "c", "w2") == first
    assert seats_taken(tmp_path, "printer") == 2


def test_seat_and_rate_slot_directories_have_group_access_whatever_the_umask(
    spool_root: Path,
) -> None:
    old = os.umask(0o077)
    try:
        take_seat(spool_root, Cap("grouped", 1), "t1", "w1")
        reserve(spool_root, Limit("grouped", parse_rate("1/s")), "t1", time.time())
    finally:
        os.umask(old)
    slots = rates.key_dir(spool_root, "grouped")
    for made in (key_dir(spool_root, "grouped"), slots, *slots.iterdir()):
        assert stat.S_IMODE(made.stat().st_mode) == 0o770, made


def test_a_cap_of_two_never_has_three_running_at_once_across_four_workers(
    app: Spool, tmp_path: Path, start_worker: StartWorker
) -> None:
    log = tmp_path / "runs.log"
    ids = app.enqueue_many([{"task": "capped", "args": [str(log), 0.3]} for _ in range(10)])
    for _ in range(4):
        start_worker()
    wait_until(lambda: all(app.state_of(i) == "done" for i in ids), timeout=40)
    rows = [line.split() for line in log.read_text().split("\n")[:-1]]
    intervals = [(float(start), float(end)) for start, end in rows]
    assert len(intervals) == 10
    assert most_at_once(intervals) == 2
    assert {int(app.show(i)["attempts"]) for i in ids} == {1}  # a full cap is no attempt


def test_the_seat_of_a_killed_worker_is_freed_by_the_recovery_of_its_claim(
    app: Spool, spool_root: Path, start_worker: StartWorker
) -> None:
    capped = {"concurrency": 1, "concurrency_key": "one-at-a-time"}
    first_id = app.enqueue_many([{"task": "sleep_then_return", "args": [30], **capped}])[0]
    seat = key_dir(spool_root, "one-at-a-time") / "0"
    first = start_worker()
    wait_until(has_started(spool_root, first_id), timeout=20)  # (so its attempt is lost)
    holder = json.loads(seat.read_text())["worker"]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    start_worker()  # recover_seconds = 0.5 in tests/spool.toml
    wait_until(
        lambda: seat.exists() and json.loads(seat.read_text() or "{}").get("worker") != holder,
        timeout=5,  # a new worker's start, its recover_seconds, and the task's start again
    )
    assert int(app.show(first_id)["lost"]) == 1  # the same task runs again, on its own seat


def test_a_task_file_with_a_bad_concurrency_is_rejected_with_the_reason(spool_root: Path) -> None:
    incoming = spool_root / "default" / "incoming"
    incoming.mkdir(parents=True)
    drop_into(incoming, "c.json", json.dumps({"task": "noop", "concurrency": 0}).encode())
    run_burst(spool_root)
    note = json.loads((spool_root / "default" / "failed" / "c.error.json").read_text())
    assert "'concurrency'" in note["reason"]
