"""Reloading task code: SIGHUP (or `spool reload`) makes a worker import its task modules again.

Each test writes a tasks module and a config naming it into tmp_path, runs a real worker there
(the config's directory is where tasks modules are imported from), rewrites the module, and
signals the worker for real.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from spool import Spool
from spool.cli import cli
from spool.layout import workers_dir
from tests.conftest import TEST_CONFIG, spool_command, wait_until

MODULE = "hot_tasks"
CONFIG = f"""\
tasks = ["{MODULE}"]

[defaults]
max_retries = 0

[workers]
rescan_seconds = 1.0
recover_seconds = 0.5
"""

V1 = """\
from spool import Spool

app = Spool()


@app.task()
def a():
    return "a v1"
"""

V2 = """\
from spool import Spool

app = Spool()


@app.task(timeout=30)
def a():
    return "a v2, after the reload"


@app.task()
def b(x):
    return x * 2
"""

# a handler that runs until the test creates its gate file, then says which code ran it
GATED = """\
import os
import time

from spool import Spool

app = Spool()


@app.task()
def gated(started, gate):
    open(started, "w").close()
    while not os.path.exists(gate):
        time.sleep(0.01)
    return "{version}"
"""


class HotWorker:
    """A worker subprocess serving the tasks module in `directory`, its log in a file."""

    def __init__(self, directory: Path, root: Path) -> None:
        self.directory, self.root = directory, root
        self.config = directory / "spool.toml"
        self.config.write_text(CONFIG)
        self.log_path = directory / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_module(self, text: str) -> None:
        (self.directory / f"{MODULE}.py").write_text(text)

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                spool_command(self.root, "worker", config=self.config),
                cwd=self.directory,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stderr=log,
            )
        wait_until(lambda: "started" in self.log() or self.proc.poll() is not None, 30)
        assert self.proc.poll() is None, self.log()
        return self.proc

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def reloads(self) -> int:
        return self.log().count("reloaded the task code")

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def hot(tmp_path: Path, spool_root: Path) -> Iterator[HotWorker]:
    directory = tmp_path / "project"
    directory.mkdir()
    worker = HotWorker(directory, spool_root)
    yield worker
    worker.stop()


@pytest.fixture
def producer(spool_root: Path) -> Spool:
    return Spool(root=str(spool_root))


def run(producer: Spool, task: str, *args: object) -> object:
    """Enqueue `task` and return its result once done (the test fails if it fails)."""
    task_id = producer.enqueue(task, args=list(args))
    wait_until(lambda: producer.state_of(task_id) in ("done", "failed"), 30)
    shown = producer.show(task_id)
    assert shown["state"] == "done", shown
    return shown["result"]


def handler_pid(root: Path) -> int:
    (info,) = [p for p in workers_dir(root).iterdir() if p.suffix == ".json"]
    return int(json.loads(info.read_text())["handler_pid"])


# ---- the worker ----------------------------------------------------------------------------


def test_sighup_loads_the_changed_module_in_the_same_worker(
    hot: HotWorker, producer: Spool
) -> None:
    hot.write_module(V1)
    proc = hot.start()
    assert run(producer, "a") == "a v1"
    hot.write_module(V2)
    hot.hup()
    wait_until(lambda: hot.reloads() == 1, 30)
    assert run(producer, "a") == "a v2, after the reload"
    assert run(producer, "b", 21) == 42
    assert proc.poll() is None
    (line,) = [line for line in hot.log().splitlines() if "reloaded the task code" in line]
    assert " INFO " in line
    assert "added b" in line
    assert "changed a (timeout None -> 30" in line


FLAKY_V1 = """\
from spool import Spool

app = Spool()


@app.task(max_retries=0, retry_backoff=0)
def flaky():
    raise RuntimeError("not yet")
"""


def test_a_reload_that_changes_a_tasks_retries_applies_to_the_next_task(
    hot: HotWorker, producer: Spool
) -> None:
    # (the worker keeps each task's retry policy until the code is reloaded)
    hot.write_module(FLAKY_V1)
    hot.start()
    first = producer.enqueue("flaky")
    wait_until(lambda: producer.state_of(first) == "failed", 30)
    assert producer.show(first)["attempts"] == 1
    hot.write_module(FLAKY_V1.replace("max_retries=0", "max_retries=2"))
    hot.hup()
    wait_until(lambda: hot.reloads() == 1, 30)
    second = producer.enqueue("flaky")
    wait_until(lambda: producer.state_of(second) == "failed", 30)
    assert producer.show(second)["attempts"] == 3


def test_a_removed_task_is_named_in_the_reload_line(hot: HotWorker) -> None:
    hot.write_module(V2)
    hot.start()
    hot.write_module(V1)
    hot.hup()
    wait_until(lambda: hot.reloads() == 1, 30)
    (line,) = [line for line in hot.log().splitlines() if "reloaded the task code" in line]
    assert "removed b" in line and "added" not in line


def test_a_reload_with_nothing_changed_says_so(hot: HotWorker) -> None:
    hot.write_module(V1)
    hot.start()
    hot.hup()
    wait_until(lambda: hot.reloads() == 1, 30)
    assert "reloaded the task code: same tasks, same options" in hot.log()


def test_sighup_during_a_task_lets_it_finish_on_the_old_code_first(
    hot: HotWorker, producer: Spool, tmp_path: Path
) -> None:
    hot.write_module(GATED.format(version="v1"))
    hot.start()
    started, gate = tmp_path / "started", tmp_path / "gate"
    first = producer.enqueue("gated", args=[str(started), str(gate)])
    wait_until(started.exists, 30)
    old_handler = handler_pid(hot.root)
    hot.write_module(GATED.format(version="v2 (reloaded)"))
    hot.hup()
    wait_until(lambda: "SIGHUP" in hot.log(), 10)  # received while the attempt runs
    assert hot.reloads() == 0
    gate.touch()
    wait_until(lambda: producer.state_of(first) == "done", 30)
    shown = producer.show(first)
    assert shown["result"] == "v1"
    assert shown["attempts"] == 1
    wait_until(lambda: hot.reloads() == 1, 30)
    assert run(producer, "gated", str(started), str(gate)) == "v2 (reloaded)"
    assert handler_pid(hot.root) != old_handler


# a quick task that says which code ran it
TICK = """\
import time

from spool import Spool

app = Spool()


@app.task()
def tick():
    time.sleep(0.01)
    return "{version}"
"""


def test_sighup_while_a_long_backlog_drains_in_batches_reloads_before_it_is_empty(
    hot: HotWorker, producer: Spool
) -> None:
    hot.write_module(TICK.format(version="v1"))
    hot.start()
    ids = producer.enqueue_many([{"task": "tick"} for _ in range(400)])  # 4 s on one worker
    wait_until(lambda: producer.state_of(ids[0]) == "done", 30)
    hot.write_module(TICK.format(version="v2"))
    hot.hup()
    wait_until(lambda: all(producer.state_of(i) == "done" for i in ids), 60)
    results = [producer.show(i)["result"] for i in ids]
    assert results[0] == "v1" and results[-1] == "v2"  # a batch takes more only for a second
    assert all(producer.show(i)["attempts"] == 1 for i in ids)
    assert hot.reloads() == 1


@pytest.mark.parametrize(
    "broken, reason",
    [
        ("def a(:\n    return 'oops'\n", "SyntaxError"),
        ("raise RuntimeError('half-deployed')\n", "RuntimeError: half-deployed"),
    ],
    ids=["syntax error", "raises at import"],
)
def test_a_module_that_no_longer_imports_is_one_error_and_the_old_code_keeps_serving(
    hot: HotWorker, producer: Spool, broken: str, reason: str
) -> None:
    hot.write_module(V1)
    proc = hot.start()
    old_handler = handler_pid(hot.root)
    hot.write_module(broken)
    hot.hup()
    wait_until(lambda: "reload failed" in hot.log(), 30)
    errors = [line for line in hot.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1, hot.log()
    assert MODULE in errors[0] and reason in errors[0]
    assert "Traceback" not in hot.log()
    assert run(producer, "a") == "a v1"
    assert handler_pid(hot.root) == old_handler
    assert proc.poll() is None
    hot.write_module(V2)  # fixed: the next reload takes it
    hot.hup()
    wait_until(lambda: hot.reloads() == 1, 30)
    assert run(producer, "b", 2) == 4


# ---- spool reload --------------------------------------------------------------------------


def invoke_reload(root: Path, config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--root", str(root), "--config", str(config), "reload"])
    return result.exit_code, result.output


def test_spool_reload_signals_the_running_worker(hot: HotWorker, producer: Spool) -> None:
    hot.write_module(V1)
    proc = hot.start()
    hot.write_module(V2)
    code, output = invoke_reload(hot.root, hot.config)
    assert code == 0, output
    assert output.strip() == (
        "signalled 1 worker(s): each reloads its task code after its running task"
    )
    wait_until(lambda: hot.reloads() == 1, 30)
    assert run(producer, "b", 5) == 10
    assert proc.poll() is None


def test_spool_reload_without_a_worker_is_one_line_and_exit_1(
    spool_root: Path, tmp_path: Path
) -> None:
    code, output = invoke_reload(spool_root, TEST_CONFIG)
    assert code == 1
    assert output.strip().splitlines() == [f"Error: no worker of {spool_root} runs on this host"]


def test_spool_reload_never_signals_the_pid_of_a_dead_worker(
    spool_root: Path, tmp_path: Path
) -> None:
    # a worker's files left behind (its lock free), naming a pid that now belongs to another
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        directory = workers_dir(spool_root)
        directory.mkdir(parents=True)
        info = {"pid": bystander.pid, "host": socket.gethostname(), "started_at": 0}
        (directory / "dead-1-abc.json").write_text(json.dumps(info))
        (directory / "dead-1-abc.lock").touch()
        code, output = invoke_reload(spool_root, TEST_CONFIG)
        assert code == 1, output
    finally:
        bystander.terminate()  # SIGHUP (1) is delivered before SIGTERM (15) if it was sent
        bystander.wait(timeout=10)
    assert bystander.returncode == -signal.SIGTERM


def test_spool_reload_skips_workers_on_other_hosts_and_says_so(
    spool_root: Path, tmp_path: Path
) -> None:
    directory = workers_dir(spool_root)
    directory.mkdir(parents=True)
    info = {"pid": 12345, "host": "elsewhere.invalid", "shared": True, "started_at": 0}
    (directory / "elsewhere-12345-abc.json").write_text(json.dumps(info))
    code, output = invoke_reload(spool_root, TEST_CONFIG)
    assert code == 1
    assert output.strip().splitlines() == [
        f"Error: no worker of {spool_root} runs on this host; "
        "skipped 1 on other hosts (run spool reload there)"
    ]


def test_spool_reload_help_says_what_it_does() -> None:
    result = CliRunner().invoke(cli, ["reload", "--help"])
    assert result.exit_code == 0
    assert "SIGHUP" in result.output and "running task" in result.output


def test_a_stray_sighup_to_the_handler_process_does_not_end_the_attempt(
    hot: HotWorker, producer: Spool, tmp_path: Path
) -> None:
    # (`pkill -HUP -f spool` reaches it too: reloading is the worker's to do)
    hot.write_module(GATED.format(version="v1"))
    hot.start()
    started, gate = tmp_path / "started", tmp_path / "gate"
    task_id = producer.enqueue("gated", args=[str(started), str(gate)])
    wait_until(started.exists, 30)
    os.kill(handler_pid(hot.root), signal.SIGHUP)
    gate.touch()
    wait_until(lambda: producer.state_of(task_id) in ("done", "failed"), 30)
    shown = producer.show(task_id)
    assert (shown["state"], shown["result"]) == ("done", "v1"), shown
    assert hot.reloads() == 0


TIMING_OUT = """\
import time

from spool import Spool

app = Spool()


@app.task(timeout=0.2)
def stuck(gate):
    while True:
        time.sleep(0.01)


@app.task()
def a():
    return "{version}"
"""


def test_a_module_broken_when_the_handler_process_must_restart_keeps_the_worker_alive(
    hot: HotWorker, producer: Spool
) -> None:
    # a timeout kills the handler process; the next one imports the module as it is now
    hot.write_module(TIMING_OUT.format(version="v1"))
    proc = hot.start()
    hot.write_module("def a(:\n")
    stuck = producer.enqueue("stuck", args=["never"])
    wait_until(lambda: producer.state_of(stuck) == "failed", 30)
    waiting = producer.enqueue("a")
    wait_until(lambda: "cannot run" in hot.log(), 30)
    assert proc.poll() is None
    assert producer.state_of(waiting) in ("incoming", "processing")
    (line, *_) = [line for line in hot.log().splitlines() if " ERROR " in line]
    assert "SyntaxError" in line and "goes back to incoming/" in line
    hot.write_module(TIMING_OUT.format(version="v2, fixed"))
    wait_until(lambda: producer.state_of(waiting) == "done", 30)
    assert producer.show(waiting)["result"] == "v2, fixed"
    assert producer.show(waiting)["attempts"] == 1


def test_a_handler_process_started_again_after_a_timeout_brings_its_tasks_to_the_worker(
    hot: HotWorker, producer: Spool
) -> None:
    hot.write_module(TIMING_OUT.format(version="v1"))
    hot.start()
    hot.write_module(TIMING_OUT.format(version="v2") + "\n\n@app.task()\ndef c():\n    return 3\n")
    stuck = producer.enqueue("stuck", args=["never"])
    wait_until(lambda: producer.state_of(stuck) == "failed", 30)
    assert run(producer, "a") == "v2"  # the new handler process imported the module as it is
    wait_until(lambda: hot.reloads() == 1, 30)
    assert "reloaded the task code: added c" in hot.log()
    assert run(producer, "c") == 3  # known to the worker too, not rejected as unknown


def test_a_worker_whose_terminal_is_closed_stops_after_its_task_instead_of_reloading(
    hot: HotWorker, producer: Spool, tmp_path: Path
) -> None:
    # `spool worker` in a terminal window that is closed: SIGHUP, and the terminal is gone
    hot.write_module(GATED.format(version="v1"))
    master, terminal = os.openpty()
    proc = subprocess.Popen(
        spool_command(hot.root, "worker", config=hot.config),
        cwd=hot.directory,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    hot.proc = proc  # (stopped by the fixture if the test fails)
    os.close(terminal)
    started, gate = tmp_path / "started", tmp_path / "gate"
    task_id = producer.enqueue("gated", args=[str(started), str(gate)])
    wait_until(started.exists, 30)
    os.close(master)
    gate.touch()
    assert proc.wait(timeout=30) == 0
    assert producer.state_of(task_id) == "done"


def test_under_nohup_a_worker_outlives_its_terminal_and_still_reloads_on_sighup(
    hot: HotWorker, producer: Spool
) -> None:
    hot.write_module(V1)
    master, terminal = os.openpty()

    def nohup_in_terminal() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    with open(hot.log_path, "wb") as log:  # (nohup sends the output to a file)
        hot.proc = subprocess.Popen(
            spool_command(hot.root, "worker", config=hot.config),
            cwd=hot.directory,
            stdin=terminal,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=nohup_in_terminal,
        )
    os.close(terminal)
    wait_until(lambda: "started" in hot.log(), 30)
    os.close(master)
    wait_until(lambda: "the terminal is gone; going on (nohup)" in hot.log(), 30)
    hot.write_module(V2)
    hot.hup()
    wait_until(lambda: hot.reloads() == 1, 30)
    assert run(producer, "b", 4) == 8
    assert hot.proc.poll() is None


def test_a_reload_republishes_the_manifest_so_producers_see_the_new_tasks(
    hot: HotWorker, producer: Spool, spool_root: Path
) -> None:
    from spool.errors import BadArguments, UnknownTaskName
    from spool.manifest import read_all

    hot.write_module(V1)
    hot.start()
    with pytest.raises(UnknownTaskName):
        producer.enqueue("b", [1])
    hot.write_module(V2)
    hot.hup()
    wait_until(lambda: hot.reloads() == 1, 30)
    (manifest,) = read_all(spool_root)
    assert sorted(manifest.tasks) == ["a", "b"]
    with pytest.raises(BadArguments):
        producer.enqueue("b", [])
    assert run(producer, "b", 2) == 4
