"""Several hosts on one spool: workers and schedulers on separate sshfs mounts of one directory,
each mount made from its own network namespace (tests/hostbed.py): separate client caches, no
shared locks, no inotify across hosts, hosts that die or are cut off.

Shared mode is not configured here: the workers detect the FUSE mount and switch to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from spool import Spool
from spool.config import load_settings
from tests.conftest import PROJECT_DIR, TEST_CONFIG, names, spool_command, wait_until
from tests.hostbed import HostBed

FAST_LEASE = 5.0  # with caches off; with sshfs's default caches the default lease (30 s) holds


def write_config(directory: Path, extra: str = "") -> Path:
    path = directory / "hosts.toml"
    path.write_text(TEST_CONFIG.read_text() + extra)
    return path


def start_worker(bed: HostBed, host: int, config: Path, logs: Path) -> subprocess.Popen[bytes]:
    root = bed.mount(host) / "spool"
    log = open(logs / f"worker-{host}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    with log:
        return bed.spawn(
            host,
            spool_command(root, "worker", config=config),
            cwd=PROJECT_DIR,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stderr=log,
        )


def server_app(bed: HostBed, config: Path) -> Spool:
    """A producer on the file server itself (local disk): enqueues without the network."""
    root = bed.export / "spool"
    root.mkdir(exist_ok=True)
    return Spool(settings=load_settings(str(root), str(config), env={}))


def fast_lease_bed(hostbed: Callable[..., HostBed], tmp_path: Path) -> tuple[HostBed, Path, Spool]:
    """Two hosts with caches off, a config with a short lease, a producer on the server."""
    bed = hostbed(hosts=2, cache=False)
    config = write_config(tmp_path, f"\n[cluster]\nlease = {FAST_LEASE}\n")
    return bed, config, server_app(bed, config)


def done_tasks(bed: HostBed) -> dict[str, dict[str, object]]:
    done = bed.export / "spool" / "default" / "done"
    return {n.removesuffix(".json"): json.loads((done / n).read_bytes()) for n in names(done)}


def runs_of(record: Path) -> Counter[str]:
    """How often each task body ran (tests.tasks.record appends one line per run)."""
    if not record.exists():
        return Counter()
    return Counter(line.split()[0] for line in record.read_text().splitlines())


@pytest.mark.parametrize("cache", [False, True], ids=["caches-off", "default-caches"])
def test_workers_on_two_hosts_drain_2000_tasks_each_once(
    hostbed: Callable[..., HostBed], tmp_path: Path, cache: bool
) -> None:
    bed = hostbed(hosts=2, cache=cache)
    config = write_config(tmp_path)
    record = tmp_path / "runs.txt"
    ids = server_app(bed, config).enqueue_many(
        [{"task": "record", "args": [str(record), f"t{i}"]} for i in range(2000)]
    )
    started = time.monotonic()
    workers = [start_worker(bed, host, config, tmp_path) for host in (0, 1)]
    wait_until(lambda: len(names(bed.export / "spool" / "default" / "done")) == 2000, 240, 0.2)
    took = time.monotonic() - started
    done = done_tasks(bed)
    assert sorted(done) == sorted(ids)
    assert all(task["attempts"] == 1 for task in done.values())
    assert set(runs_of(record).values()) == {1}  # no body ran twice
    by_worker = Counter(str(task["worker"]) for task in done.values())
    pids = {str(w.pid) for w in workers}
    assert {w.split("-")[-2] for w in by_worker} <= pids
    assert len(by_worker) == 2, by_worker  # both hosts took part
    print(f"\n2 hosts, cache={cache}: 2,000 tasks in {took:.1f} s, per worker {by_worker}")


@pytest.mark.parametrize(
    ("cache", "lease"), [(False, FAST_LEASE), (True, 30.0)], ids=["caches-off", "default-caches"]
)
def test_a_dead_hosts_claim_is_recovered_by_the_other_host_after_the_lease(
    hostbed: Callable[..., HostBed], tmp_path: Path, cache: bool, lease: float
) -> None:
    """With sshfs's default caches the default lease (30 s) applies."""
    bed = hostbed(hosts=2, cache=cache)
    config = write_config(tmp_path, f"\n[cluster]\nlease = {lease}\n")
    app = server_app(bed, config)
    record = tmp_path / "runs.txt"
    ids = app.enqueue_many(
        [{"task": "record", "args": [str(record), f"t{i}"]} for i in range(100)]
        + [{"task": "sleep_then_return", "args": [0.3]} for _ in range(100)]
    )
    processing = bed.export / "spool" / "default" / "processing"
    doomed = start_worker(bed, 0, config, tmp_path)
    wait_until(lambda: len(names(bed.export / "spool" / "default" / "done")) >= 120, 60, 0.05)
    start_worker(bed, 1, config, tmp_path)
    owner_pid = str(doomed.pid)
    wait_until(lambda: any(f"-{owner_pid}-" in n for n in names(processing)), 10, 0.005)
    bed.kill_host(0)
    killed = time.monotonic()
    stuck = [n for n in names(processing) if f"-{owner_pid}-" in n]
    assert stuck, "host 0 held no claim when it died"
    wait_until(lambda: not any(f"-{owner_pid}-" in n for n in names(processing)), 2 * lease + 10)
    recovered_after = time.monotonic() - killed
    wait_until(lambda: len(names(bed.export / "spool" / "default" / "done")) == 200, 120, 0.1)
    done = done_tasks(bed)
    assert sorted(done) == sorted(ids)
    lost = [t for t in done.values() if t.get("history")]
    assert len(lost) == len(stuck)
    assert all(t["history"][0]["error"]["type"] == "WorkerLost" for t in lost)
    assert recovered_after >= lease * 0.9
    print(f"\nhost 0 killed (lease {lease:g} s): its claim recovered after {recovered_after:.1f} s")


def test_a_host_cut_off_past_its_lease_does_not_commit_over_the_recoverer(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    bed, config, app = fast_lease_bed(hostbed, tmp_path)
    pid_file = tmp_path / "pid"
    task_id = app.enqueue("write_pid_then_sleep", [str(pid_file), 2.0])
    processing = bed.export / "spool" / "default" / "processing"
    start_worker(bed, 0, config, tmp_path)
    wait_until(pid_file.exists, 20, 0.01)  # host 0 runs it
    recoverer = start_worker(bed, 1, config, tmp_path)
    bed.partition(0)
    cut = time.monotonic()
    try:
        done = bed.export / "spool" / "default" / "done"
        wait_until(lambda: names(done) == [f"{task_id}.json"], 60, 0.1)
        recovered_in = time.monotonic() - cut
        time.sleep(max(0.0, 20 - (time.monotonic() - cut)))  # 20 s cut off in all
    finally:
        bed.heal(0)
    logs = list(tmp_path.glob("worker-0-*.log"))
    wait_until(lambda: "lost the claim" in logs[0].read_text(), 60, 0.2)
    task = done_tasks(bed)[task_id]
    assert task["attempts"] == 2
    assert task["history"][0]["error"]["type"] == "WorkerLost"
    assert f"-{recoverer.pid}-" in str(task["worker"])
    wait_until(lambda: names(processing) == [], 20, 0.1)
    assert names(bed.export / "spool" / "default" / "done") == [f"{task_id}.json"]
    assert done_tasks(bed)[task_id] == task
    print(f"\npartition: host 1 finished the task {recovered_in:.1f} s after the cut")


def test_two_schedulers_on_two_hosts_fire_each_slot_once(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    bed = hostbed(hosts=2, cache=True)
    config = write_config(tmp_path, '\n[schedule.tick]\ntask = "echo"\nevery = "1s"\n')
    (bed.export / "spool").mkdir()
    schedulers = []
    for host in (0, 1):
        root = bed.mount(host) / "spool"
        schedulers.append(
            bed.spawn(
                host,
                spool_command(root, "scheduler", config=config),
                cwd=PROJECT_DIR,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(12)  # (the slots are what is under test: 12 s of them)
    for proc in schedulers:
        proc.terminate()
        proc.wait(timeout=30)
    incoming = bed.export / "spool" / "default" / "incoming"
    ids = [json.loads((incoming / n).read_bytes())["id"] for n in names(incoming)]
    assert len(ids) >= 8
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    slots = sorted(i.rpartition(".")[2] for i in ids)
    print(f"\ntwo schedulers: {len(ids)} slots, {len(set(ids))} tasks")
    assert len(slots) == len(set(slots))


def run_doctor(bed: HostBed, config: Path) -> subprocess.CompletedProcess[str]:
    """`spool doctor --fs` on host 0's mount, with host 1's mount as the other one."""
    (bed.export / "spool").mkdir()
    command = spool_command(bed.mount(0) / "spool", "doctor", "--fs", config=config)
    command += ["--other-mount", str(bed.mount(1) / "spool")]
    result = subprocess.run(
        command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=180, check=False
    )
    print("\n" + result.stdout)
    return result


def test_doctor_on_the_shared_mount_reports_host_local_locks(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    result = run_doctor(hostbed(hosts=2, cache=False), write_config(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fuse.sshfs" in result.stdout
    assert "locks are host-local" in result.stdout
    assert "a renewed mtime shows there after" in result.stdout
    assert "safe in shared mode" in result.stdout


def test_doctor_flags_a_lease_the_mounts_attribute_cache_would_break(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    """sshfs's default caches hide a renewal for up to 20 s: a 10 s lease would expire live
    claims on other hosts."""
    config = write_config(tmp_path, "\n[cluster]\nlease = 10\n")
    result = run_doctor(hostbed(hosts=2, cache=True), config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOT safe in shared mode" in result.stdout
    assert "lease = 10 s" in result.stdout


def test_unique_keys_hold_once_across_hosts(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    """Producers on two hosts enqueue the same 100 unique keys at once: 100 tasks."""
    bed = hostbed(hosts=2, cache=True)
    config = write_config(tmp_path)
    (bed.export / "spool").mkdir()
    lines = tmp_path / "keys.jsonl"
    lines.write_text(
        "".join(json.dumps({"task": "echo", "unique_key": f"k{i}"}) + "\n" for i in range(100))
    )
    producers = [
        bed.spawn(
            host,
            spool_command(bed.mount(host) / "spool", "enqueue", f"--from={lines}", config=config),
            cwd=PROJECT_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for host in (0, 1)
    ]
    outputs = [p.communicate(timeout=120) for p in producers]
    assert [p.returncode for p in producers] == [0, 0], outputs
    incoming = bed.export / "spool" / "default" / "incoming"
    keys = [json.loads((incoming / n).read_bytes())["unique_key"] for n in names(incoming)]
    assert sorted(keys) == sorted(f"k{i}" for i in range(100))
    ids = [out.decode().split() for out, _ in outputs]
    assert ids[0] == ids[1]  # each key's holder, as both producers were told


def test_a_pause_on_one_host_holds_the_workers_of_another(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    bed = hostbed(hosts=2, cache=False)
    config = write_config(tmp_path)
    app = server_app(bed, config)

    def spool_on_host0(*args: str) -> None:
        command = spool_command(bed.mount(0) / "spool", *args, config=config)
        subprocess.run(command, cwd=PROJECT_DIR, check=True, timeout=60, capture_output=True)

    start_worker(bed, 1, config, tmp_path)
    spool_on_host0("pause", "default")
    task_id = app.enqueue("echo", ["held"])
    done = bed.export / "spool" / "default" / "done"
    time.sleep(3)  # (what is under test is that nothing happens: 6 poll intervals)
    assert names(done) == []
    spool_on_host0("resume", "default")
    wait_until(lambda: names(done) == [f"{task_id}.json"], 20, 0.05)


def test_status_on_one_host_lists_the_live_workers_of_both(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    """A lock says nothing across hosts: a shared worker is live while its info file is."""
    bed = hostbed(hosts=2, cache=False)
    config = write_config(tmp_path)
    (bed.export / "spool").mkdir()
    workers = [start_worker(bed, host, config, tmp_path) for host in (0, 1)]
    command = spool_command(bed.mount(0) / "spool", "status", "--json", config=config)

    def live_pids() -> set[int]:
        done = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, timeout=60)
        return {w["pid"] for w in json.loads(done.stdout)["workers"]} if done.stdout else set()

    wait_until(lambda: live_pids() == {w.pid for w in workers}, 30, 0.2)
