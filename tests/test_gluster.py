"""Shared mode on a real distributed filesystem: a GlusterFS volume (tests/glusterbed.py), one
brick served from its own network namespace, two FUSE clients each in theirs: separate client
caches, the volume's default caches and performance translators."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

from spool import Spool
from spool.config import load_settings
from tests.conftest import PROJECT_DIR, TEST_CONFIG, names, spool_command, wait_until
from tests.glusterbed import GlusterBed
from tests.test_hosts import runs_of


def shared_config(directory: Path) -> Path:
    path = directory / "gluster.toml"
    path.write_text(TEST_CONFIG.read_text() + "\n[cluster]\nshared = true\n")
    return path


def start_worker(bed: GlusterBed, client: int, config: Path, logs: Path) -> Popen[bytes]:
    """A worker on `client`'s mount, its log in a file under `logs`."""
    command = spool_command(bed.mount(client) / "spool", "worker", config=config)
    with open(logs / f"worker-{client}.log", "ab") as log:
        return bed.spawn(client, command, cwd=PROJECT_DIR, stderr=log)


def test_two_shared_mode_workers_on_two_glusterfs_clients_run_300_tasks_each_once(
    glusterbed: Callable[..., GlusterBed], tmp_path: Path
) -> None:
    bed = glusterbed(clients=2)
    config = shared_config(tmp_path)
    roots = [bed.mount(i) / "spool" for i in (0, 1)]
    roots[0].mkdir()
    producer = Spool(settings=load_settings(str(roots[0]), str(config), env={}))
    record = tmp_path / "runs.txt"
    ids = producer.enqueue_many(
        [{"task": "record", "args": [str(record), f"t{i}"]} for i in range(300)]
    )
    started = time.monotonic()
    workers = [
        subprocess.Popen(
            spool_command(root, "worker", "--burst", config=config),
            cwd=PROJECT_DIR,
            stderr=subprocess.DEVNULL,
        )
        for root in roots
    ]
    try:
        wait_until(lambda: all(w.poll() is not None for w in workers), 120, 0.1)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(timeout=10)
    took = time.monotonic() - started
    assert [w.returncode for w in workers] == [0, 0]
    done_dir = roots[1] / "default" / "done"
    done = {
        n.removesuffix(".json"): json.loads((done_dir / n).read_bytes()) for n in names(done_dir)
    }
    assert sorted(done) == sorted(ids)
    assert all(task["attempts"] == 1 for task in done.values())
    assert set(runs_of(record).values()) == {1}  # no body ran twice
    by_worker = {str(task["worker"]) for task in done.values()}
    print(f"\nGlusterFS, 2 clients: 300 tasks in {took:.1f} s by {len(by_worker)} workers")
    assert len(by_worker) == 2  # both clients took part


def test_the_worker_and_doctor_see_a_glusterfs_mount_as_shared(
    glusterbed: Callable[..., GlusterBed], tmp_path: Path
) -> None:
    bed = glusterbed(clients=1)
    (bed.mount(0) / "spool").mkdir()
    done = subprocess.run(
        spool_command(bed.mount(0) / "spool", "doctor", "--json"),
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fs = json.loads(done.stdout)["filesystem"]
    assert fs["fstype"] == "fuse.glusterfs" and fs["network"]
    assert "GlusterFS" in fs["why"]


def test_doctor_warns_that_renames_to_a_common_name_can_both_succeed_on_glusterfs(
    glusterbed: Callable[..., GlusterBed], tmp_path: Path
) -> None:
    """Measured: renames to unique names, one winner each through one client or two; to a
    common name, one winner through one client, but through two clients both renames
    succeeded in 34-77 rounds of 200. A warning: the verdict stays safe."""
    bed = glusterbed(clients=2)
    (bed.mount(0) / "spool").mkdir()
    command = spool_command(bed.mount(0) / "spool", "doctor", "--fs", "--json")
    done = subprocess.run(
        [*command, "--other-mount", str(bed.mount(1) / "spool")],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    probes = report["probes"]
    print(f"\nGlusterFS: {probes['common_target_other_mount']['summary']}")
    assert probes["rename_race_other_mount"]["ok"]  # claims: one winner across clients
    assert min(probes["rename_race_other_mount"]["wins"]) > 0  # the two clients raced
    assert probes["common_target"]["both_won"] == 0
    assert probes["common_target_other_mount"]["both_won"] > 0
    assert probes["other_mount"]["locks"] == "shared"
    assert len(report["warnings"]) == 1 and "common name" in report["warnings"][0]
    assert report["safe"]


def test_a_dead_clients_claim_is_recovered_by_the_other_client_after_the_lease(
    glusterbed: Callable[..., GlusterBed], tmp_path: Path
) -> None:
    """GlusterFS shows another client's renewal after about 1 s (FUSE attribute cache), so a
    5 s lease holds (the doctor's margin is 3 s)."""
    lease = 5.0
    bed = glusterbed(clients=2)
    config = tmp_path / "gluster.toml"
    config.write_text(TEST_CONFIG.read_text() + f"\n[cluster]\nshared = true\nlease = {lease}\n")
    roots = [bed.mount(i) / "spool" for i in (0, 1)]
    roots[0].mkdir()
    producer = Spool(settings=load_settings(str(roots[0]), str(config), env={}))
    record = tmp_path / "runs.txt"
    ids = producer.enqueue_many(
        [{"task": "record", "args": [str(record), f"t{i}"]} for i in range(100)]
        + [{"task": "sleep_then_return", "args": [0.1]} for _ in range(100)]
    )
    done_dir, processing = (roots[1] / "default" / state for state in ("done", "processing"))
    doomed = start_worker(bed, 0, config, tmp_path)
    wait_until(lambda: len(names(done_dir)) >= 120, 60, 0.05)
    start_worker(bed, 1, config, tmp_path)
    owner = f"-{doomed.pid}-"
    wait_until(lambda: any(owner in n for n in names(processing)), 10, 0.005)
    bed.kill_client(0)
    killed = time.monotonic()
    stuck = [n for n in names(processing) if owner in n]
    assert stuck, "client 0 held no claim when it died"
    wait_until(lambda: not any(owner in n for n in names(processing)), 2 * lease + 10, 0.05)
    recovered_after = time.monotonic() - killed
    wait_until(lambda: len(names(done_dir)) == 200, 120, 0.1)
    done = {
        n.removesuffix(".json"): json.loads((done_dir / n).read_bytes()) for n in names(done_dir)
    }
    assert sorted(done) == sorted(ids)
    lost = [t for t in done.values() if t.get("history")]
    assert len(lost) == len(stuck)
    assert all(t["history"][0]["error"]["type"] == "WorkerLost" for t in lost)
    assert recovered_after >= lease * 0.9
    print(
        f"\nGlusterFS client 0 killed (lease {lease:g} s): recovered after {recovered_after:.1f} s"
    )


def test_a_client_cut_off_past_its_lease_does_not_commit_over_the_recoverer(
    glusterbed: Callable[..., GlusterBed], tmp_path: Path
) -> None:
    """Client 0 runs a task and is cut off for 20 s (below GlusterFS's 42 s ping timeout):
    client 1 recovers the claim after the lease and finishes it; once healed, client 0 finds
    its claim gone and drops its outcome."""
    bed = glusterbed(clients=2)
    config = tmp_path / "gluster.toml"
    config.write_text(TEST_CONFIG.read_text() + "\n[cluster]\nshared = true\nlease = 5\n")
    roots = [bed.mount(i) / "spool" for i in (0, 1)]
    roots[0].mkdir()
    producer = Spool(settings=load_settings(str(roots[0]), str(config), env={}))
    pid_file = tmp_path / "pid"
    task_id = producer.enqueue("write_pid_then_sleep", [str(pid_file), 2.0])
    done_dir, processing = (roots[1] / "default" / state for state in ("done", "processing"))
    start_worker(bed, 0, config, tmp_path)
    wait_until(pid_file.exists, 20, 0.01)  # client 0 runs it
    recoverer = start_worker(bed, 1, config, tmp_path)
    bed.partition(0)
    cut = time.monotonic()
    try:
        wait_until(lambda: names(done_dir) == [f"{task_id}.json"], 60, 0.1)
        recovered_in = time.monotonic() - cut
        time.sleep(max(0.0, 20 - (time.monotonic() - cut)))  # 20 s cut off in all
    finally:
        bed.heal(0)
    log = tmp_path / "worker-0.log"
    wait_until(lambda: "lost the claim" in log.read_text(), 60, 0.2)
    task = json.loads((done_dir / f"{task_id}.json").read_bytes())
    assert task["attempts"] == 2
    assert task["history"][0]["error"]["type"] == "WorkerLost"
    assert f"-{recoverer.pid}-" in str(task["worker"])
    wait_until(lambda: names(processing) == [], 20, 0.1)
    assert names(done_dir) == [f"{task_id}.json"]
    assert json.loads((done_dir / f"{task_id}.json").read_bytes()) == task
    print(f"\nGlusterFS partition: client 1 finished the task {recovered_in:.1f} s after the cut")
