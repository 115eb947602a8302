"""Shared fixtures: a spool root in tmp_path, real worker subprocesses, bounded waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spool import Spool
from spool.config import load_settings
from tests.mosquitto import Broker, mosquitto_binary

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_DIR = TESTS_DIR.parent
TEST_CONFIG = TESTS_DIR / "spool.toml"
Popen = subprocess.Popen[bytes]


def wait_until(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


def spool_command(root: Path, *args: str, config: str | Path = TEST_CONFIG) -> list[str]:
    return [sys.executable, "-m", "spool", "--root", str(root), "--config", str(config), *args]


@pytest.fixture
def spool_root(tmp_path: Path) -> Path:
    root = tmp_path / "spool"
    root.mkdir()
    return root


@pytest.fixture
def app(spool_root: Path, monkeypatch: pytest.MonkeyPatch) -> Spool:
    """A producer-side Spool on the test root, configured like the test workers."""
    monkeypatch.setenv("SPOOL_ROOT", str(spool_root))
    return Spool(settings=load_settings(str(spool_root), str(TEST_CONFIG), env={}))


def started_dir(spool_root: Path) -> Path:
    """Where the tests' sleeping handlers mark that they run (tests/tasks.py's note_started)."""
    path = spool_root.parent / "started"
    path.mkdir(exist_ok=True)
    return path


def has_started(spool_root: Path, task_id: str) -> Callable[[], bool]:
    """Whether a handler of tests/tasks.py that notes its start has started `task_id`."""
    return (started_dir(spool_root) / task_id).exists


@pytest.fixture
def start_worker(spool_root: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `spool worker` subprocesses on the test root; all are killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        *args: str, stderr: int | None = None, config: str | Path = TEST_CONFIG
    ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SPOOL_ROOT": str(spool_root), "PYTHONUNBUFFERED": "1"}
        env["SPOOL_TEST_STARTED"] = str(started_dir(spool_root))
        command = spool_command(spool_root, "worker", *args, config=config)
        proc = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stderr=stderr)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # two TERMs: stop now, killing what a running handler started
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)  # two deliveries, not one coalesced signal
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def run_burst(
    spool_root: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `spool worker --burst` to completion and return it (output captured)."""
    env = {**os.environ, "SPOOL_ROOT": str(spool_root)}
    return subprocess.run(
        spool_command(spool_root, "worker", "--burst", *args),
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def drop_into(incoming: Path, name: str, data: bytes) -> Path:
    """Drop a file into incoming/ the way a foreign program must: write a dot-name, rename in."""
    staging = incoming / f".{name}.part"
    staging.write_bytes(data)
    os.rename(staging, incoming / name)
    return incoming / name


def write_in_place(path: Path, data: bytes, pause: float = 0.03) -> None:
    """Write a file the way the contract says not to: in place, a byte at a time, flushed,
    with a pause after each (a slow producer, or a copy over a slow link)."""
    with path.open("wb") as out:
        for i in range(len(data)):
            out.write(data[i : i + 1])
            out.flush()
            time.sleep(pause)


def names(directory: Path) -> list[str]:
    """Visible entries of a state directory, sorted."""
    if not directory.is_dir():
        return []
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running behind it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads leaked: {leaked}"


@pytest.fixture
def start_resident(spool_root: Path, tmp_path: Path) -> Iterator[Callable[..., Popen]]:
    """Start a resident `spool COMMAND` (notify, mqtt-intake) with a config, logging to a file
    in tmp_path; with `ready`, wait until that text is in its log. All stop at the end."""
    procs: list[Popen] = []

    def start(command: str, config: Path, ready: str | None = None) -> Popen:
        log_path = tmp_path / f"{command}-{len(procs)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                spool_command(spool_root, command, config=config),
                cwd=PROJECT_DIR,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stderr=log,
            )
        procs.append(proc)
        if ready is not None:
            wait_until(lambda: ready in log_path.read_text() or proc.poll() is not None, 20)
            assert proc.poll() is None, log_path.read_text()
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto broker on a free 127.0.0.1 port (skipped if Mosquitto is not installed)."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (.ci/run installs it)")
    broker = Broker(tmp_path / "mosquitto", binary)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def hostbed(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Start a `tests.hostbed.HostBed` (simulated hosts sharing a directory over sshfs):
    `hostbed(hosts=2, cache=False)` returns it started (`fsname="mfs#..."`: mounts that look
    like MooseFS's); all stop at the end. Skipped where the bed cannot run (not root, no
    sshfs/sshd, no network namespaces)."""
    from tests.hostbed import HostBed, available

    reason = available()
    if reason is not None:
        pytest.skip(reason)
    beds: list[HostBed] = []

    def start(hosts: int = 2, cache: bool = False, fsname: str | None = None) -> HostBed:
        bed = HostBed(tmp_path / f"hostbed{len(beds)}", hosts=hosts, cache=cache, fsname=fsname)
        beds.append(bed)
        return bed.start()

    yield start
    stop_beds(beds)


def stop_beds(beds: list[Any]) -> None:
    """Stop every bed (each stop is tried), then fail if one could not be cleaned up."""
    errors = []
    for bed in beds:
        try:
            bed.stop()
        except RuntimeError as exc:
            errors.append(exc)
    assert not errors, errors


@pytest.fixture
def netbed(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Start a bed of simulated hosts sharing one directory (a `tests.netbed.NetBed`):
    `netbed("sshfs", hosts=2, cache=False)` (tests.hostbed), `netbed("glusterfs")`,
    `netbed("moosefs")` or `netbed("juicefs")` (tests.dfsbed: real distributed filesystems,
    with the engine's default caches; `cache` is sshfs's only); all stop at the end. Skipped
    with the reason where it cannot run (not root, the engine's packages not installed)."""
    from tests.dfsbed import ENGINES
    from tests.hostbed import HostBed, available
    from tests.netbed import NetBed

    beds: list[NetBed] = []

    def start(engine: str, hosts: int = 2, cache: bool = False) -> NetBed:
        reason = available() if engine == "sshfs" else ENGINES[engine].available()
        if reason is not None:
            pytest.skip(reason)
        directory = tmp_path / f"{engine}{len(beds)}"
        if engine == "sshfs":
            bed: NetBed = HostBed(directory, hosts=hosts, cache=cache)
        else:
            bed = ENGINES[engine](directory, hosts=hosts)
        beds.append(bed)
        return bed.start()

    yield start
    stop_beds(beds)


@pytest.fixture
def full_disk(spool_root: Path) -> Iterator[object]:
    """A 1 MiB tmpfs mounted on the spool root (see tests.fulldisk): `full_disk.fill()`,
    `.free()`, `.full_for(seconds)`. Unmounted at the end; skipped where it cannot be mounted
    (not root)."""
    from tests.fulldisk import FullDisk, Unavailable

    disk = FullDisk(spool_root)
    try:
        disk.mount()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield disk
    finally:
        disk.unmount()
