"""Shared mode on one machine (`[cluster] shared = true` on a local disk): leases instead of
locks, recovery on the sweeper's own clock, the fence against a late outcome, polling.

The same code on real separate network mounts: tests/test_hosts.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from spool import Spool
from spool.config import load_settings
from spool.decision import RetryPolicy
from spool.index import QueueIndex
from spool.layout import canonical_name, queue_dirs
from spool.lease import LeaseKeeper, LeaseWatch
from spool.recovery import Recovery
from spool.stats import WorkerStats
from spool.workers import BATCH_SUFFIX
from tests.conftest import (
    PROJECT_DIR,
    TEST_CONFIG,
    drop_into,
    names,
    spool_command,
    wait_until,
    write_in_place,
)

LEASE = 3.0


@pytest.fixture
def shared_config(tmp_path: Path) -> Path:
    path = tmp_path / "shared.toml"
    path.write_text(
        TEST_CONFIG.read_text() + f"\n[cluster]\nshared = true\nlease = {LEASE}\n"
        'poll_interval = "200ms"\n'
    )
    return path


@pytest.fixture
def shared_app(spool_root: Path, shared_config: Path) -> Spool:
    return Spool(settings=load_settings(str(spool_root), str(shared_config), env={}))


def done_tasks(root: Path, queue: str = "default") -> dict[str, dict[str, object]]:
    done = root / queue / "done"
    return {n: json.loads((done / n).read_bytes()) for n in names(done)}


def info_file_of_the_only_worker(root: Path) -> str:
    """The name of the one worker's info file in .workers/, once it is there."""
    workers = root / ".workers"
    wait_until(lambda: any(n.endswith(".json") for n in names(workers)), timeout=10)
    (info,) = [n for n in names(workers) if n.endswith(".json")]
    return info


# --- the lease pieces ----------------------------------------------------------------------


def test_a_lease_expires_only_after_the_same_mtime_was_seen_for_the_whole_period() -> None:
    watch = LeaseWatch(lease_seconds=10)
    assert not watch.expired("a", 1, now=100.0)  # first sighting starts the period
    assert not watch.expired("a", 1, now=109.0)
    assert not watch.expired("a", 2, now=109.5)  # renewed: the period starts again
    assert not watch.expired("a", 2, now=119.0)
    assert watch.expired("a", 2, now=119.6)
    watch.keep_only([])
    assert not watch.expired("a", 2, now=200.0)  # forgotten: a fresh sighting


def test_a_file_with_an_ancient_mtime_is_not_expired_at_first_sight(tmp_path: Path) -> None:
    path = tmp_path / "claim"
    path.write_text("x")
    os.utime(path, (0, 0))  # another host's clock may be anywhere
    watch = LeaseWatch(lease_seconds=5)
    assert not watch.stat_expired("claim", path, now=100.0)
    assert not watch.stat_expired("gone", tmp_path / "missing", now=100.0)


def test_the_keeper_renews_what_it_holds_and_reports_a_file_taken_away(tmp_path: Path) -> None:
    held, lost = tmp_path / "held", threading.Event()
    held.write_text("x")
    os.utime(held, (0, 0))
    keeper = LeaseKeeper()
    keeper.hold(held, on_lost=lost.set)
    keeper.start()
    try:
        wait_until(lambda: held.stat().st_mtime > time.time() - 60, timeout=5)
        held.unlink()
        wait_until(lost.is_set, timeout=5)
    finally:
        keeper.stop()


# --- workers in shared mode -----------------------------------------------------------------


def test_two_shared_mode_workers_drain_every_task_once(
    spool_root: Path, shared_config: Path, shared_app: Spool, start_worker
) -> None:
    ids = shared_app.enqueue_many([{"task": "echo", "args": [i]} for i in range(300)])
    for _ in range(2):
        start_worker(config=shared_config)
    wait_until(lambda: len(names(spool_root / "default" / "done")) == 300, timeout=60)
    assert sorted(n.removesuffix(".json") for n in names(spool_root / "default" / "done")) == (
        sorted(ids)
    )
    assert names(spool_root / "default" / "failed") == []


def test_a_shared_worker_keeps_no_list_of_what_it_hands_over(
    spool_root: Path, shared_config: Path, shared_app: Spool, start_worker
) -> None:
    task_id = shared_app.enqueue("sleep_then_return", [1.0])
    start_worker(config=shared_config)
    wait_until(lambda: shared_app.state_of(task_id) == "processing", timeout=10)
    # (its recovery goes by leases: the list a one-host worker keeps would cost a write per task)
    assert [n for n in names(spool_root / ".workers") if n.endswith(BATCH_SUFFIX)] == []
    wait_until(lambda: shared_app.state_of(task_id) == "done", timeout=10)


def test_a_task_dropped_by_another_program_is_found_by_polling(
    spool_root: Path, shared_config: Path, start_worker
) -> None:
    start_worker(config=shared_config)
    incoming = spool_root / "default" / "incoming"
    wait_until(incoming.is_dir, timeout=10)
    drop_into(incoming, "dropped.json", b'{"task": "echo", "args": [1]}')
    wait_until(lambda: names(spool_root / "default" / "done") == ["dropped.json"], timeout=10)


def test_a_file_written_in_place_slowly_runs_once_whole_though_leases_touch_claims(
    spool_root: Path, shared_config: Path, shared_app: Spool, start_worker
) -> None:
    """A claim's mtime is renewed as soon as it is taken, so "unchanged" must come from the
    bytes, not the file time."""
    start_worker(config=shared_config)
    incoming = spool_root / "default" / "incoming"
    wait_until(incoming.is_dir, timeout=10)
    write_in_place(incoming / "slow.json", b'{"task": "add", "args": [40, 2]}')
    wait_until(lambda: shared_app.state_of("slow") == "done", timeout=15)
    assert names(spool_root / "default" / "failed") == []
    assert shared_app.show("slow")["result"] == 42


def test_a_shared_worker_renews_its_claim_while_the_task_runs(
    spool_root: Path, shared_config: Path, shared_app: Spool, start_worker
) -> None:
    shared_app.enqueue("sleep_then_return", [3 * LEASE])
    start_worker(config=shared_config)
    processing = spool_root / "default" / "processing"
    wait_until(lambda: names(processing), timeout=10)
    claim = processing / names(processing)[0]
    first = claim.stat().st_mtime
    wait_until(lambda: claim.exists() and claim.stat().st_mtime >= first + 1, timeout=5)
    # a second worker sees the lease renewed and never takes the claim
    start_worker(config=shared_config)
    wait_until(lambda: names(spool_root / "default" / "done"), timeout=6 * LEASE)
    (task,) = done_tasks(spool_root).values()
    assert task["attempts"] == 1 and "history" not in task


def test_a_claim_nobody_renews_is_recovered_after_the_lease(
    spool_root: Path, shared_config: Path, shared_app: Spool, start_worker
) -> None:
    """A claim whose rename reply was lost, or whose host died: no lock is asked, only the lease."""
    task_id = shared_app.enqueue("echo", ["lost"])
    dirs = spool_root / "default"
    (name,) = names(dirs / "incoming")
    claim = dirs / "processing" / f"{name}@otherhost-4242-abcdef"
    os.rename(dirs / "incoming" / name, claim)
    start_worker(config=shared_config)
    started = time.monotonic()
    wait_until(lambda: names(dirs / "done") == [f"{task_id}.json"], timeout=4 * LEASE + 5)
    assert time.monotonic() - started >= LEASE
    task = done_tasks(spool_root)[f"{task_id}.json"]
    assert task["attempts"] == 2
    assert "otherhost-4242-abcdef died" in task["history"][0]["error"]["message"]


def test_a_claim_someone_keeps_renewing_is_left_alone(
    spool_root: Path, shared_config: Path, shared_app: Spool, start_worker
) -> None:
    shared_app.enqueue("echo", ["held"])
    dirs = spool_root / "default"
    (name,) = names(dirs / "incoming")
    claim = dirs / "processing" / f"{name}@otherhost-4242-abcdef"
    os.rename(dirs / "incoming" / name, claim)
    start_worker(config=shared_config)
    deadline = time.monotonic() + 3 * LEASE
    while time.monotonic() < deadline:  # a live worker on another host, as seen from here
        os.utime(claim)
        time.sleep(0.3)
    assert claim.exists() and names(dirs / "done") == []


def test_a_worker_that_lost_its_lease_does_not_commit_over_the_recoverer(
    spool_root: Path, shared_config: Path, shared_app: Spool, start_worker, tmp_path: Path
) -> None:
    """A worker frozen past its lease (as a partitioned host is) comes back to find its claim
    taken: the recoverer's outcome stands, the late one is dropped."""
    pid_file = tmp_path / "pid"
    task_id = shared_app.enqueue("write_pid_then_sleep", [str(pid_file), 1.0])
    log_path = tmp_path / "frozen.log"
    with open(log_path, "wb") as log:
        frozen = start_worker(config=shared_config, stderr=log)
    wait_until(pid_file.exists, timeout=10)
    frozen.send_signal(signal.SIGSTOP)  # its handler runs on and finishes; nothing renews
    try:
        start_worker(config=shared_config)
        done = spool_root / "default" / "done"
        wait_until(lambda: names(done) == [f"{task_id}.json"], timeout=4 * LEASE + 10)
    finally:
        frozen.send_signal(signal.SIGCONT)
    wait_until(lambda: "lost the claim" in log_path.read_text(), timeout=10)
    task = done_tasks(spool_root)[f"{task_id}.json"]
    assert task["attempts"] == 2
    assert task["history"][0]["error"]["type"] == "WorkerLost"
    assert names(spool_root / "default" / "processing") == []
    time.sleep(1.0)  # let the unfrozen worker do whatever else it would
    assert done_tasks(spool_root)[f"{task_id}.json"] == task


def test_a_shared_worker_counts_as_alive_while_its_info_file_exists(
    spool_root: Path, shared_config: Path, start_worker
) -> None:
    start_worker(config=shared_config)
    workers, info = spool_root / ".workers", info_file_of_the_only_worker(spool_root)
    assert json.loads((workers / info).read_bytes())["shared"] is True
    status = subprocess.run(
        [*spool_command(spool_root, "status", "--json", config=shared_config)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert [w["id"] for w in json.loads(status.stdout)["workers"]] == [info[: -len(".json")]]


def test_an_info_file_removed_by_a_sweeper_is_written_again(
    spool_root: Path, shared_config: Path, start_worker
) -> None:
    """A worker cut off longer than its lease loses its info file to a sweeper elsewhere."""
    start_worker(config=shared_config)
    workers, info = spool_root / ".workers", info_file_of_the_only_worker(spool_root)
    (workers / info).unlink()
    wait_until((workers / info).exists, timeout=5)


def test_a_claim_under_the_sweepers_own_name_that_nothing_renews_is_recovered(
    spool_root: Path,
) -> None:
    """A claim whose rename reply was lost is on the server under this worker's own name,
    but the worker never knew it had it: nothing renews it, so its own sweeper recovers it."""
    own = "thishost-1-abcdef"
    dirs = queue_dirs(spool_root, "default").create()
    name = canonical_name(0, 1_800_000_000_000_000, "lost-reply")
    (dirs.processing / f"{name}@{own}").write_text('{"task": "echo", "args": [1]}')
    recovery = Recovery(
        spool_root,
        own,
        1 << 20,
        lambda task: RetryPolicy(max_retries=3),
        WorkerStats(spool_root, own),
        lease_seconds=0.2,
    )
    index = QueueIndex(dirs, 1 << 20)
    recovery.run([index], time.time(), 100.0)  # the first sighting starts the lease period
    assert names(dirs.processing) == [f"{name}@{own}"]
    recovery.run([index], time.time(), 100.3)  # a lease period later: no sleep
    assert names(dirs.processing) == [] and names(dirs.incoming) == [name]
    assert json.loads((dirs.incoming / name).read_bytes())["attempts"] == 1
