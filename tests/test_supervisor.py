"""Supervisor keeps the workers resident: a real supervisord, real workers, real signals.

Most tests run supervisord on a config rendered like `spool up` renders one, with its socket
and logs in a short directory under /tmp (unix socket paths must stay under 108 bytes) and the
spool root in tmp_path. The tests of the shipped conf/supervisord.conf and of `spool up` in the
project directory share the project's var/ socket, so they take a lock and skip when an
operator's supervisord already listens there.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from filelock import FileLock

from spool import Spool
from spool.cli import cli
from spool.config import load_settings
from spool.deploy.supervisor import (
    SHIPPED_CONF,
    read_conf,
    render_local_conf,
    render_program_block,
    render_shipped_conf,
    socket_credentials,
)
from spool.deploy.up import scripts_dir, why_render
from spool.layout import QueueDirs
from tests.conftest import (
    PROJECT_DIR,
    TEST_CONFIG,
    has_started,
    names,
    spool_command,
    started_dir,
    wait_until,
)
from tests.test_batch_claims import slow_tasks, started, started_values, task_id_of

pytestmark = pytest.mark.supervisor

WORKER = "spool-worker"
STATUS_LINE = re.compile(r"^(\S+)\s+([A-Z_]+)\s*(.*)$")


# ---- processes -----------------------------------------------------------------------------


def process_table() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        table[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    return table


def descendants(pid: int) -> set[int]:
    table = process_table()
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in table.items() if pp == parent and p not in found]
        found.update(children)
        frontier.extend(children)
    return found


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def is_spool_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"spool" in cmdline


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(is_running(p) for p in pids), timeout=15)


def stop_tree(proc: subprocess.Popen[bytes], graceful_seconds: float) -> None:
    """Stop `proc` with SIGTERM; after `graceful_seconds`, SIGKILL it and all it started."""
    if proc.poll() is None:
        tree = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=graceful_seconds)
        except subprocess.TimeoutExpired:
            tree |= descendants(proc.pid)
            proc.kill()
            proc.wait(timeout=10)
            kill_all({p for p in tree if is_spool_process(p)})


# ---- a supervisord under test --------------------------------------------------------------


@dataclass
class Supervisord:
    """One supervisord on `conf`, started and stopped by the test; its programs tracked."""

    conf: Path
    env: dict[str, str]
    output: Path
    proc: subprocess.Popen[bytes] | None = None
    seen_pids: set[int] = field(default_factory=set)

    def start(self) -> Supervisord:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf)],
                env=self.env,
                cwd=PROJECT_DIR,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def socket_path(self) -> str:
        return read_conf(self.conf).get("supervisorctl", "serverurl").removeprefix("unix://")

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """supervisorctl -c <conf> ARGS, as an operator types it."""
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def statuses(self) -> dict[str, tuple[str, int | None]]:
        """Program name -> (state, pid) from `supervisorctl status`."""
        found: dict[str, tuple[str, int | None]] = {}
        for line in self.ctl("status").stdout.splitlines():
            match = STATUS_LINE.match(line)
            if match and match.group(1).startswith(f"{WORKER}:"):
                pid = re.search(r"pid (\d+),", match.group(3))
                found[match.group(1)] = (match.group(2), int(pid.group(1)) if pid else None)
                if pid:
                    self.seen_pids.add(int(pid.group(1)))
        return found

    def running_pids(self) -> list[int]:
        return [pid for state, pid in self.statuses().values() if state == "RUNNING" and pid]

    def wait_running(self, count: int, timeout: float = 60) -> list[int]:
        wait_until(lambda: len(self.running_pids()) == count, timeout=timeout, interval=0.2)
        return self.running_pids()

    def process_info(self) -> list[dict[str, Any]]:
        """supervisor.getAllProcessInfo over the socket (exit status, spawn errors)."""
        from supervisor.xmlrpc import SupervisorTransport

        username, password = socket_credentials(self.conf)
        transport = SupervisorTransport(username, password, f"unix://{self.socket_path}")
        try:
            proxy = xmlrpc.client.ServerProxy("http://localhost", transport=transport)
            infos: list[dict[str, Any]] = proxy.supervisor.getAllProcessInfo()
        finally:
            transport.close()
        return infos

    def log_text(self) -> str:
        logfile = read_conf(self.conf).get("supervisord", "logfile")
        path = Path(logfile.replace("%(here)s", str(self.conf.parent)))
        return path.read_text() if path.exists() else ""

    def kill_everything(self) -> None:
        """SIGKILL supervisord and every process under it, all at once: a power cut."""
        assert self.proc is not None
        tree = descendants(self.proc.pid)
        self.proc.kill()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        kill_all(tree)

    def close(self, graceful_seconds: float = 60) -> int | None:
        """Shut down in order (SIGTERM), or kill what is left; return supervisord's exit code."""
        if self.proc is None:
            return None
        stop_tree(self.proc, graceful_seconds)
        leftovers = {p for p in self.seen_pids if is_running(p) and is_spool_process(p)}
        kill_all(leftovers)
        return self.proc.returncode


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose unix socket paths stay short."""
    path = Path(tempfile.mkdtemp(prefix="spool-sv-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def supervised_env(spool_root: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "SPOOL_ROOT": str(spool_root), "SPOOL_CONFIG": str(TEST_CONFIG)}
    env["SPOOL_TEST_STARTED"] = str(started_dir(spool_root))
    env.update(extra)
    return env


@pytest.fixture
def supervisord(spool_root: Path, short_dir: Path) -> Iterator[Callable[..., Supervisord]]:
    """Start supervisord on a config rendered into short_dir, for the test config and root."""
    started: list[Supervisord] = []

    def start(processes: int = 2) -> Supervisord:
        (short_dir / "log").mkdir(exist_ok=True)
        conf = short_dir / "supervisord.conf"
        settings = load_settings(str(spool_root), str(TEST_CONFIG), env={})
        conf.write_text(
            render_local_conf(PROJECT_DIR, short_dir, processes, settings.timeout_seconds, "a test")
        )
        QueueDirs(spool_root, "default").create()
        sv = Supervisord(conf, supervised_env(spool_root), short_dir / "supervisord.out")
        started.append(sv)
        return sv.start()

    yield start
    for sv in started:
        sv.close()


@pytest.fixture
def project_var() -> Iterator[Path]:
    """The project's var/, held for one test at a time (its socket is the shipped config's)."""
    var = PROJECT_DIR / "var"
    (var / "log").mkdir(parents=True, exist_ok=True)
    with FileLock(str(var / ".supervisor-tests.lock"), timeout=600):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(var / "supervisor.sock"))
        except OSError:
            pass
        else:
            pytest.skip("a supervisord already listens on the project's var/supervisor.sock")
        finally:
            probe.close()
        yield var


def state_counts(root: Path) -> dict[str, int]:
    dirs = QueueDirs(root, "default")
    return {
        s: len(names(dirs.state(s)))
        for s in ("incoming", "delayed", "processing", "done", "failed")
    }


def done_count(root: Path) -> int:
    return len(names(QueueDirs(root, "default").done))


# ---- the shipped config --------------------------------------------------------------------


def test_shipped_conf_is_the_rendered_template() -> None:
    assert (PROJECT_DIR / SHIPPED_CONF).read_text() == render_shipped_conf()


def test_shipped_conf_parses_and_keeps_workers_resident() -> None:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    parser.read(PROJECT_DIR / SHIPPED_CONF)
    program = parser[f"program:{WORKER}"]
    assert program["command"] == "spool worker"  # no --root/--config: SPOOL_* or conf/spool.toml
    assert program["directory"] == "%(here)s/.."
    assert program["numprocs"] == "2"
    assert program["process_name"] == "%(program_name)s-%(process_num)02d"
    assert program["autostart"] == program["autorestart"] == program["killasgroup"] == "true"
    assert program["stopsignal"] == "TERM"
    assert int(program["stopwaitsecs"]) > 300
    assert int(program["startsecs"]) > 0
    assert program["environment"] == 'PYTHONUNBUFFERED="1"'
    scheduler = parser["program:spool-scheduler"]
    assert scheduler["command"] == "spool scheduler" and scheduler["numprocs"] == "1"
    assert scheduler["stopsignal"] == "TERM" and scheduler["autorestart"] == "true"
    assert parser["unix_http_server"]["file"] == "%(here)s/../var/supervisor.sock"
    assert parser["unix_http_server"]["chmod"] == "0700"
    assert parser["supervisorctl"]["serverurl"] == "unix://%(here)s/../var/supervisor.sock"
    assert parser.has_section("rpcinterface:supervisor")
    daemon = parser["supervisord"]
    assert daemon["logfile"].startswith("%(here)s/../var/log/")
    assert daemon["pidfile"].startswith("%(here)s/../var/")
    assert daemon["logfile_maxbytes"] and daemon["logfile_backups"]
    assert program["stdout_logfile"].startswith("%(here)s/../var/log/")
    assert program["stdout_logfile_maxbytes"] and program["stdout_logfile_backups"]
    text = (PROJECT_DIR / SHIPPED_CONF).read_text()
    assert "/work/" not in text and "/home/" not in text


def test_shipped_conf_starts_workers_that_follow_spool_root_and_spool_config(
    app: Spool, spool_root: Path, project_var: Path, short_dir: Path
) -> None:
    scripts = scripts_dir()
    if scripts is None:
        pytest.skip(f"no `spool` script beside {sys.executable}")
    env = supervised_env(spool_root, PATH=f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}")
    sv = Supervisord(PROJECT_DIR / SHIPPED_CONF, env, short_dir / "supervisord.out").start()
    try:
        sv.wait_running(2)
        task_id = app.enqueue("add", args=[20, 22])
        assert app.wait(task_id, timeout=30) == 42
        assert (project_var / "log" / f"{WORKER}-00.log").exists()
    finally:
        code = sv.close()
    assert code == 0
    assert not (project_var / "supervisor.sock").exists()


def fresh_clone(into: Path) -> Path:
    """The repository's tracked files copied into `into`, as `git clone` would leave them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=PROJECT_DIR, capture_output=True, check=False
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: no list of tracked files")
    for name in listed.stdout.decode().split("\0"):
        source = PROJECT_DIR / name
        if name and source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def test_shipped_conf_runs_as_its_header_says_on_a_fresh_clone(
    spool_root: Path, short_dir: Path
) -> None:
    # Broke once: `supervisord -c conf/supervisord.conf` on a fresh clone failed at once, as
    # var/log/ (where it logs) did not exist.
    scripts = scripts_dir()
    if scripts is None or not (scripts / "supervisord").is_file():
        pytest.skip(f"no `spool` and `supervisord` scripts beside {sys.executable}")
    clone = fresh_clone(short_dir / "clone")
    env = {k: v for k, v in os.environ.items() if k != "SPOOL_CONFIG"}  # the clone's config
    env.update(SPOOL_ROOT=str(spool_root), PATH=f"{scripts}{os.pathsep}{env.get('PATH', '')}")
    conf = clone / SHIPPED_CONF
    with open(short_dir / "supervisord.out", "wb") as out:
        proc = subprocess.Popen(
            ["supervisord", "-n", "-c", str(SHIPPED_CONF)],  # as the header of the file says
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sv = Supervisord(conf, env, short_dir / "supervisord.out", proc=proc)
    try:
        wait_until(
            lambda: proc.poll() is not None or (clone / "var" / "supervisor.sock").exists(),
            timeout=30,
        )
        assert proc.poll() is None, (short_dir / "supervisord.out").read_text()
        sv.wait_running(2)
        producer = Spool(root=spool_root)
        task_id = producer.enqueue("echo", args=["from a fresh clone"])
        assert producer.wait(task_id, timeout=30) == "from a fresh clone"
    finally:
        code = sv.close()
    assert code == 0
    assert (clone / "var" / "log" / f"{WORKER}-00.log").exists()


# ---- operator commands ---------------------------------------------------------------------


def test_status_shows_every_worker_running(supervisord: Callable[..., Supervisord]) -> None:
    sv = supervisord(processes=3)
    sv.wait_running(3)
    result = sv.ctl("status")
    running = [line.split()[0] for line in result.stdout.splitlines() if "RUNNING" in line]
    workers = [name for name in running if name.startswith(f"{WORKER}:")]
    assert workers == [f"{WORKER}:{WORKER}-0{n}" for n in range(3)], result.stdout
    assert result.returncode == 0


def test_500_tasks_run(
    app: Spool, spool_root: Path, supervisord: Callable[..., Supervisord]
) -> None:
    sv = supervisord()
    ids = app.enqueue_many([{"task": "add", "args": [n, 1]} for n in range(500)])
    started = time.monotonic()
    wait_until(lambda: done_count(spool_root) == 500, timeout=180, interval=0.1)
    print(f"\n500 tasks done in {time.monotonic() - started:.1f} s by 2 workers")
    assert state_counts(spool_root) == {
        "incoming": 0,
        "delayed": 0,
        "processing": 0,
        "done": 500,
        "failed": 0,
    }
    assert app.wait(ids[499], timeout=1) == 500
    assert len(sv.wait_running(2)) == 2  # (they may still be STARTING: startsecs=2)


def test_stop_lets_the_running_task_finish_and_workers_exit_0(
    app: Spool, supervisord: Callable[..., Supervisord]
) -> None:
    sv = supervisord()
    sv.wait_running(2)
    task_id = app.enqueue("sleep_then_return", args=[3, "slept"])
    wait_until(has_started(app.root, task_id))
    result = sv.ctl("stop", f"{WORKER}:*")
    assert result.returncode == 0, result.stdout + result.stderr
    assert app.state_of(task_id) == "done"
    assert app.wait(task_id, timeout=1) == "slept"
    assert {state for state, _ in sv.statuses().values()} == {"STOPPED"}
    for info in sv.process_info():
        if info["group"] == WORKER:
            assert (info["statename"], info["exitstatus"]) == ("STOPPED", 0), info
    log = sv.log_text()
    for n in range(2):
        assert f"stopped: {WORKER}-0{n} (exit status 0)" in log


def test_supervisorctl_signal_hup_reloads_each_worker_in_place(
    app: Spool, supervisord: Callable[..., Supervisord], short_dir: Path
) -> None:
    sv = supervisord()
    before = sorted(sv.wait_running(2))
    logs = [short_dir / "log" / f"{WORKER}-0{n}.log" for n in range(2)]
    wait_until(lambda: all(log.exists() and "started" in log.read_text() for log in logs), 30)
    result = sv.ctl("signal", "HUP", f"{WORKER}:*")
    assert result.returncode == 0, result.stdout + result.stderr
    for log in logs:  # the worker itself got it (no shell between to die of it)
        wait_until(lambda log=log: "reloaded the task code" in log.read_text(), 30)
    assert sorted(sv.running_pids()) == before
    task_id = app.enqueue("echo", args=["after the reload"])
    assert app.wait(task_id, timeout=30) == "after the reload"


def test_start_and_restart_bring_the_workers_back(
    app: Spool, supervisord: Callable[..., Supervisord]
) -> None:
    sv = supervisord()
    first = sv.wait_running(2)
    assert sv.ctl("stop", f"{WORKER}:*").returncode == 0
    assert sv.ctl("start", f"{WORKER}:*").returncode == 0
    second = sv.wait_running(2)
    assert sv.ctl("restart", f"{WORKER}:*").returncode == 0
    third = sv.wait_running(2)
    assert not set(first) & set(second) and not set(second) & set(third)
    task_id = app.enqueue("echo", args=["back"])
    assert app.wait(task_id, timeout=30) == "back"


def test_nothing_is_lost_when_supervisord_and_workers_are_killed(
    app: Spool, spool_root: Path, tmp_path: Path, supervisord: Callable[..., Supervisord]
) -> None:
    sv = supervisord()
    sv.wait_running(2)
    log = tmp_path / "starts.log"
    ids = app.enqueue_many(slow_tasks(log, 40, seconds=0.2))
    wait_until(lambda: len({pid for _, pid in started(log)}) == 2, timeout=30)  # both run one
    sv.kill_everything()
    processing = QueueDirs(spool_root, "default").processing
    stranded = {task_id_of(e.partition("@")[0]) for e in names(processing) if "@" in e}
    ran_before = set(started_values(log))
    assert stranded - ran_before, "the kill should leave claims that had not started"
    sv.start()
    wait_until(lambda: done_count(spool_root) == 40, timeout=60, interval=0.1)
    assert state_counts(spool_root)["processing"] == state_counts(spool_root)["failed"] == 0
    assert sorted(
        n.removesuffix(".json") for n in names(QueueDirs(spool_root, "default").done)
    ) == sorted(ids)
    # a task left claimed as it ran ran again; one that had not started came back unchanged,
    # but for the one a second recoverer may count (at most two lost per worker: see handover)
    starts = started_values(log)
    assert all(starts.count(i) >= 2 for i in stranded & ran_before), (stranded, starts)
    lost = {i for i in stranded if app.show(i).get("lost")}
    assert lost and len(lost) <= 4 and len(lost - ran_before) <= 2, (stranded, ran_before, lost)


def claim_of(processing: Path, task_id: str) -> str | None:
    return next((e for e in names(processing) if f"_{task_id}.json@" in e), None)


def seconds_to_recover_a_killed_claim(app: Spool, spool_root: Path, log: Path) -> float:
    """Enqueue a slow task, SIGKILL the worker running it; time until another takes it."""
    processing = QueueDirs(spool_root, "default").processing
    starts = len(started(log))
    task_id = app.enqueue("note_start_then_sleep", args=[str(log), "x", 2.0])
    wait_until(lambda: claim_of(processing, task_id) is not None, timeout=30)
    owner = (claim_of(processing, task_id) or "").rpartition("@")[2]
    pid = json.loads((spool_root / ".workers" / f"{owner}.json").read_text())["pid"]
    wait_until(lambda: len(started(log)) > starts, timeout=30)  # (a claim not started: no loss)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: not (claim_of(processing, task_id) or "").endswith(f"@{owner}"),
        timeout=30,
        interval=0.005,
    )
    recovered = time.monotonic() - killed_at
    wait_until(lambda: app.state_of(task_id) == "done", timeout=30)
    assert app.show(task_id)["attempts"] == 2
    return recovered


def test_claim_of_a_killed_worker_is_recovered_within_seconds(
    app: Spool, spool_root: Path, tmp_path: Path, supervisord: Callable[..., Supervisord]
) -> None:
    sv = supervisord()
    sv.wait_running(2)
    recovery_seconds = []
    for _ in range(4):
        recovery_seconds.append(seconds_to_recover_a_killed_claim(app, spool_root, tmp_path / "s"))
        sv.wait_running(2)  # Supervisor started a new worker
    print(
        f"\nSIGKILL -> claim recovered: {', '.join(f'{s:.3f}' for s in recovery_seconds)} s "
        f"(recover_seconds=0.5)"
    )
    assert max(recovery_seconds) < 10


# ---- spool up ------------------------------------------------------------------------------


def start_up(
    args: list[str], cwd: Path, env: dict[str, str], output: Path
) -> subprocess.Popen[bytes]:
    with open(output, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "spool", "up", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_spool_up_serves_the_example_tasks_until_ctrl_c(
    spool_root: Path, project_var: Path, short_dir: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPOOL_CONFIG"}  # conf/spool.toml
    env["SPOOL_ROOT"] = str(spool_root)
    output = short_dir / "up.out"
    up = start_up([], PROJECT_DIR, env, output)
    sv = Supervisord(PROJECT_DIR / SHIPPED_CONF, env, short_dir / "unused.out")
    try:
        pids = sv.wait_running(2)
        producer = Spool(root=spool_root)
        task_id = producer.enqueue("echo", args=["hello"])
        assert producer.wait(task_id, timeout=30) == "hello"
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        stop_tree(up, 60)
    text = output.read_text()
    assert "spool up: supervisord with 2 workers (conf/supervisord.conf)" in text
    assert "supervisorctl -c conf/supervisord.conf status" in text
    assert "spool up: stopped" in text
    assert not any(is_running(pid) for pid in pids)


def test_spool_up_renders_a_config_when_the_project_has_none(
    spool_root: Path, short_dir: Path
) -> None:
    env = supervised_env(spool_root, PYTHONPATH=str(PROJECT_DIR))  # the workers import tests.tasks
    output = short_dir / "up.out"
    up = start_up(["--workers", "3"], short_dir, env, output)
    conf = short_dir / "var" / "supervisord.conf"
    sv = Supervisord(conf, env, short_dir / "unused.out")
    try:
        wait_until(conf.exists, timeout=30)
        pids = sv.wait_running(3)
        second = subprocess.run(
            [sys.executable, "-m", "spool", "up"],
            cwd=short_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "a supervisord already runs for this project" in second.stderr
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
    finally:
        stop_tree(up, 60)
    assert read_conf(conf).get(f"program:{WORKER}", "numprocs") == "3"
    assert "rendered: no conf/supervisord.conf" in output.read_text()
    assert not any(is_running(pid) for pid in pids)


def second_ctrl_c_puts_the_running_task_back(spool_root: Path, short_dir: Path) -> float:
    """Start `spool up` with one worker running a 20 s task; Ctrl-C twice: the task is back in
    incoming/ (unchanged) within 5 s, and spool up has exited 0. Returns the seconds from the
    second Ctrl-C to the task in incoming/."""
    env = supervised_env(spool_root, PYTHONPATH=str(PROJECT_DIR))
    output = short_dir / "up.out"
    output.unlink(missing_ok=True)
    up = start_up(["--workers", "1"], short_dir, env, output)
    sv = Supervisord(short_dir / "var" / "supervisord.conf", env, short_dir / "unused.out")
    producer = Spool(root=spool_root)
    try:
        wait_until((short_dir / "var" / "supervisord.conf").exists, timeout=30)
        sv.wait_running(1)
        task_id = producer.enqueue("sleep_then_return", args=[20])
        wait_until(lambda: producer.state_of(task_id) == "processing", timeout=30)
        up.send_signal(signal.SIGINT)
        wait_until(lambda: "spool up: stopping;" in output.read_text(), timeout=30)
        up.send_signal(signal.SIGINT)
        stopping_now = time.monotonic()
        try:
            wait_until(lambda: producer.state_of(task_id) == "incoming", timeout=5)
        except AssertionError:
            logs = [output, *sorted((short_dir / "var" / "log").glob("*.log"))]
            raise AssertionError(
                "\n".join(f"--- {log.name}\n{log.read_text()}" for log in logs)
            ) from None
        back_after = time.monotonic() - stopping_now
        assert up.wait(timeout=30) == 0
        assert time.monotonic() - stopping_now < 15  # did not wait for the 20 s task
    finally:
        stop_tree(up, 60)
    assert producer.show(task_id)["attempts"] == 0  # put back unchanged
    return back_after


def test_second_ctrl_c_of_spool_up_puts_the_running_task_back(
    spool_root: Path, short_dir: Path
) -> None:
    second_ctrl_c_puts_the_running_task_back(spool_root, short_dir)


@pytest.mark.stress
def test_second_ctrl_c_of_spool_up_is_honoured_20_times_in_a_row(
    spool_root: Path, short_dir: Path
) -> None:
    seconds = []
    for run in range(20):
        root = spool_root / f"run{run}"  # a fresh spool: no task left from the run before
        root.mkdir()
        seconds.append(second_ctrl_c_puts_the_running_task_back(root, short_dir))
    print(f"20 of 20 put back; second Ctrl-C to incoming/: {min(seconds):.2f}-{max(seconds):.2f} s")


def test_a_sighup_to_spool_up_reloads_the_workers_and_stops_nothing(
    spool_root: Path, short_dir: Path
) -> None:
    # started with no terminal (as systemd starts it): a SIGHUP is sent on purpose
    env = supervised_env(spool_root, PYTHONPATH=str(PROJECT_DIR))
    output = short_dir / "up.out"
    with open(output, "ab") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "spool", "up", "--workers", "1"],
            cwd=short_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    var = short_dir / "var"
    sv = Supervisord(var / "supervisord.conf", env, short_dir / "unused.out")
    worker_log = var / "log" / f"{WORKER}-00.log"
    try:
        wait_until((var / "supervisord.conf").exists, timeout=30)
        before = sv.wait_running(1)
        wait_until(lambda: worker_log.exists() and "started" in worker_log.read_text(), 30)
        up.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded the task code" in worker_log.read_text(), 30)
        assert "spool up: SIGHUP: the workers reload their task code" in output.read_text()
        assert sv.running_pids() == before
        assert up.poll() is None
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
    finally:
        stop_tree(up, 60)


def test_spool_up_stops_in_order_when_its_terminal_hangs_up(
    spool_root: Path, short_dir: Path
) -> None:
    # spool up in a terminal (a pty, its controlling terminal) that is closed under it
    env = supervised_env(spool_root, PYTHONPATH=str(PROJECT_DIR))
    master, terminal = os.openpty()
    up = subprocess.Popen(
        [sys.executable, "-m", "spool", "up", "--workers", "1"],
        cwd=short_dir,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(terminal)
    shown, stop_reading = bytearray(), threading.Event()
    reader = threading.Thread(target=drain, args=(master, shown, stop_reading))
    reader.start()
    sv = Supervisord(short_dir / "var" / "supervisord.conf", env, short_dir / "unused.out")
    programs: set[int] = set()
    try:
        pids = sv.wait_running(1)
        wait_until(lambda: b"Ctrl-C stops" in shown, 30)
        programs = descendants(up.pid)
        stop_reading.set()
        reader.join(timeout=10)  # (a read in progress would keep the terminal open)
        os.close(master)  # the terminal window is closed: SIGHUP, and the tty is gone
        assert up.wait(timeout=60) == 0, bytes(shown).decode(errors="replace")
    finally:
        stop_reading.set()
        reader.join(timeout=10)
        stop_tree(up, 60)
        orphans = {p for p in programs if is_running(p) and is_spool_process(p)}
        kill_all(orphans)  # (what a supervisord that died without stopping them left)
    assert not orphans, "supervisord died and left its programs running"
    assert not any(is_running(pid) for pid in pids)
    worker_log = (short_dir / "var" / "log" / f"{WORKER}-00.log").read_text()
    assert "reloaded the task code" not in worker_log
    assert "SIGTERM: no more claims" in worker_log


def drain(fd: int, into: bytearray, stop: threading.Event) -> None:
    """Read what a pty's other end shows until told to stop."""
    while not stop.is_set():
        if select.select([fd], [], [], 0.05)[0]:
            try:
                into.extend(os.read(fd, 4096))
            except OSError:
                return


def test_spool_up_renders_a_config_when_workers_differ_from_the_shipped_one() -> None:
    scripts = Path(sys.executable).parent
    shipped = PROJECT_DIR / SHIPPED_CONF
    assert why_render(shipped, 2, 330, scripts) is None
    assert (
        why_render(shipped, 3, 330, scripts)
        == "3 workers instead of the 2 of conf/supervisord.conf"
    )
    assert "waits 330 s" in (why_render(shipped, 2, 630, scripts) or "")


def test_spool_up_without_tasks_modules_is_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("[workers]\nprocesses = 2\n")
    result = CliRunner().invoke(cli, ["--root", str(tmp_path), "--config", str(config), "up"])
    assert result.exit_code == 2
    assert "names no tasks modules" in result.output
    assert "Traceback" not in result.output


# ---- supervisor-config ---------------------------------------------------------------------


def parse_block(text: str) -> configparser.SectionProxy:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    parser.read_string(text)
    return parser[f"program:{WORKER}"]


def test_program_block_parses_and_waits_longer_than_the_longest_timeout(spool_root: Path) -> None:
    settings = load_settings(str(spool_root), str(TEST_CONFIG), env={})
    program = parse_block(render_program_block(settings, None, "spool"))
    assert int(program["stopwaitsecs"]) > settings.timeout_seconds
    assert program["command"] == f"{sys.executable} -m spool worker"
    assert program["directory"] == str(Path.cwd())
    assert program["user"] == "spool"
    assert program["numprocs"] == "2"
    assert f'SPOOL_CONFIG="{TEST_CONFIG}"' in program["environment"]
    assert f'SPOOL_ROOT="{spool_root}"' in program["environment"]


def test_program_block_waits_for_the_slowest_registered_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"slow_tasks_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text(
        "from spool import Spool\napp = Spool(root='r')\n"
        "@app.task(timeout=600)\ndef crunch() -> None: ...\n"
    )
    config = tmp_path / "spool.toml"
    config.write_text(f'tasks = ["{module}"]\n[defaults]\ntimeout = 60\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    try:
        text = render_program_block(load_settings(None, str(config), env={}), 4, None)
    finally:
        sys.modules.pop(module, None)
    program = parse_block(text)
    assert int(program["stopwaitsecs"]) == 630
    assert program["numprocs"] == "4"
    assert "user" not in program


def test_program_block_falls_back_to_the_default_timeout_when_tasks_do_not_import(
    tmp_path: Path,
) -> None:
    config = tmp_path / "spool.toml"
    config.write_text('tasks = ["no_such_tasks_module"]\n[defaults]\ntimeout = 100\n')
    text = render_program_block(load_settings(None, str(config), env={}), None, None)
    assert "; task timeouts unknown (cannot import tasks module 'no_such_tasks_module'" in text
    assert int(parse_block(text)["stopwaitsecs"]) == 130


def test_supervisor_config_command_prints_a_block(spool_root: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "--root",
            str(spool_root),
            "--config",
            str(TEST_CONFIG),
            "supervisor-config",
            "--workers",
            "3",
            "--user",
            "www-data",
        ],
    )
    assert result.exit_code == 0, result.output
    program = parse_block(result.output)
    assert (program["numprocs"], program["user"]) == ("3", "www-data")


# ---- chaos ---------------------------------------------------------------------------------


@dataclass
class Produced:
    ids: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=lambda: {"cli": 0, "api": 0, "drop": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[BaseException] = field(default_factory=list)

    def add(self, kind: str, task_id: str) -> None:
        with self.lock:
            self.ids.append(task_id)
            self.by_kind[kind] += 1


def produce_with_cli_and_api(
    app: Spool, root: Path, produced: Produced, stop: threading.Event
) -> None:
    rng = random.Random(1)
    n = 0
    while not stop.is_set():
        n += 1
        seconds = round(rng.uniform(0, 0.2), 3)
        if n % 4 == 0:
            result = subprocess.run(
                spool_command(
                    root,
                    "enqueue",
                    "sleep_then_return",
                    str(seconds),
                    "--kwargs",
                    json.dumps({"value": f"cli-{n}"}),
                ),
                cwd=PROJECT_DIR,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            produced.add("cli", result.stdout.strip())
        else:
            produced.add("api", app.enqueue("sleep_then_return", args=[seconds, f"api-{n}"]))
        stop.wait(rng.uniform(0.1, 0.3))


def produce_raw_drops(root: Path, produced: Produced, stop: threading.Event) -> None:
    """Another program's producer: write elsewhere, then rename into incoming/."""
    rng = random.Random(2)
    dirs = QueueDirs(root, "default")
    n = 0
    while not stop.is_set():
        n += 1
        stem = f"drop-{n}"
        task: dict[str, Any] = {
            "task": "sleep_then_return",
            "args": [round(rng.uniform(0, 0.2), 3)],
        }
        if n % 2:
            task["id"] = f"dropped-id-{n}"
        data = json.dumps(task).encode()
        # write in tmp/ and rename into incoming/, or write a name that does not end in .json
        staging = dirs.tmp / f".{stem}.json" if n % 3 else dirs.incoming / f"{stem}.json.part"
        staging.write_bytes(data)
        os.rename(staging, dirs.incoming / f"{stem}.json")
        produced.add("drop", task.get("id", stem))
        stop.wait(rng.uniform(0.1, 0.3))


def kill_workers(sv: Supervisord, kills: list[int], stop: threading.Event) -> None:
    """SIGKILL a random RUNNING worker every 1-2 s; Supervisor starts a new one."""
    rng = random.Random(3)
    while not stop.wait(rng.uniform(1.0, 2.0)):
        running = sv.running_pids()
        if running:
            pid = rng.choice(running)
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)


def run_guarded(target: Callable[..., None], produced: Produced, *args: Any) -> threading.Thread:
    def guarded() -> None:
        try:
            target(*args)
        except BaseException as exc:
            produced.errors.append(exc)

    thread = threading.Thread(target=guarded, name=target.__name__)
    thread.start()
    return thread


def test_chaos_random_kills_while_producers_enqueue_lose_nothing(
    app: Spool, spool_root: Path, supervisord: Callable[..., Supervisord]
) -> None:
    chaos_seconds = 25.0
    sv = supervisord()
    sv.wait_running(2)
    produced, kills, stop = Produced(), [], threading.Event()
    threads = [
        run_guarded(produce_with_cli_and_api, produced, app, spool_root, produced, stop),
        run_guarded(produce_raw_drops, produced, spool_root, produced, stop),
        run_guarded(kill_workers, produced, sv, kills, stop),
    ]
    try:
        stop.wait(chaos_seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not produced.errors, produced.errors
    drain_started = time.monotonic()
    total = len(produced.ids)
    wait_until(lambda: done_count(spool_root) >= total, timeout=60, interval=0.1)
    drain_seconds = time.monotonic() - drain_started

    dirs = QueueDirs(spool_root, "default")
    done = {}
    for name in names(dirs.done):
        done[name.removesuffix(".json")] = json.loads((dirs.done / name).read_text())
    lost = sorted(set(produced.ids) - set(done))
    duplicated = len(produced.ids) - len(set(produced.ids)) + len(set(done) - set(produced.ids))
    reruns = sorted(i for i, task in done.items() if task["attempts"] > 1)
    print(
        f"\nchaos {chaos_seconds:g} s: enqueued {total} {produced.by_kind}, kills {len(kills)}, "
        f"lost {len(lost)}, duplicated {duplicated}, re-runs {len(reruns)}, "
        f"drained in {drain_seconds:.1f} s"
    )
    assert not lost
    assert duplicated == 0
    assert all(task["id"] == task_id for task_id, task in done.items())
    assert names(dirs.incoming) == names(dirs.processing) == names(dirs.delayed) == []
    assert names(dirs.failed) == []
    assert len(kills) >= 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_spool_up_keeps_a_token_for_its_dashboard_streams_task_events_and_logs_no_alarms(
    spool_root: Path, short_dir: Path
) -> None:
    import urllib.request

    port = free_port()
    config = short_dir / "spool.toml"
    config.write_text(TEST_CONFIG.read_text() + f"\n[web]\nport = {port}\n")
    env = supervised_env(spool_root, PYTHONPATH=str(PROJECT_DIR), SPOOL_CONFIG=str(config))
    env.pop("SPOOL_WEB_TOKEN", None)
    output = short_dir / "up.out"
    up = start_up(["--workers", "1"], short_dir, env, output)
    sv = Supervisord(short_dir / "var" / "supervisord.conf", env, short_dir / "unused.out")
    token_file = short_dir / "var" / "web-token"
    try:
        wait_until((short_dir / "var" / "supervisord.conf").exists, timeout=30)
        sv.wait_running(1)
        assert token_file.stat().st_mode & 0o777 == 0o600
        wait_until(lambda: port_answers(port), timeout=30)
        producer = Spool(root=spool_root)
        failing = producer.enqueue("fail", args=["on purpose"], max_retries=0)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/tasks",
            data=json.dumps({"task": "add", "args": [2, 3]}).encode(),
            headers={"Authorization": f"Bearer {token_file.read_text().strip()}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 202
            added = json.loads(answer.read())["id"]
        assert producer.wait(added, timeout=30) == 5
        streamed = (f"failed  default  fail  {failing}", f"done    default  add  {added}")
        wait_until(lambda: all(line in output.read_text() for line in streamed), timeout=30)
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        stop_tree(up, 60)
    text = output.read_text()
    assert "spool-web.log" in text and f"http://127.0.0.1:{port}/" in text
    assert "token    in var/web-token" in text and "$(cat var/web-token)" in text
    assert token_file.read_text() not in text  # (the token itself is not printed)
    assert f"claimed default  add  {added}  attempt 1 on" in text
    assert f"done    default  add  {added}  in " in text
    assert f"failed  default  fail  {failing}  RuntimeError: on purpose" in text
    log = (short_dir / "var" / "log" / "supervisord.log").read_text()
    assert "without any HTTP authentication" not in log
    assert "WARN stopped" not in log and "stopped: spool-web (exit status 0)" in log


def test_spool_up_quiet_shows_no_task_events(spool_root: Path, short_dir: Path) -> None:
    env = supervised_env(spool_root, PYTHONPATH=str(PROJECT_DIR), SPOOL_WEB_TOKEN="chosen")
    output = short_dir / "up.out"
    up = start_up(["--workers", "1", "--quiet"], short_dir, env, output)
    sv = Supervisord(short_dir / "var" / "supervisord.conf", env, short_dir / "unused.out")
    try:
        wait_until((short_dir / "var" / "supervisord.conf").exists, timeout=30)
        sv.wait_running(1)
        producer = Spool(root=spool_root)
        assert producer.wait(producer.enqueue("add", args=[1, 1]), timeout=30) == 2
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        stop_tree(up, 60)
    text = output.read_text()
    assert "claimed" not in text and "done    default" not in text
    assert "token    from SPOOL_WEB_TOKEN" in text  # (the variable wins: no file is made)
    assert not (short_dir / "var" / "web-token").exists()
