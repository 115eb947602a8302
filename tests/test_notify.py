"""Completion events: the outbox written by real workers, delivered by a real `spool notify` to
a real Mosquitto broker, an HTTP receiver in a thread, and a command; outages and kill -9."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from spool import Spool, envelope
from spool.config import load_settings
from spool.errors import ConfigError
from spool.events import event_name, events_dir, sent_dir
from spool.layout import queue_dirs
from tests.conftest import PROJECT_DIR, Popen, names, run_burst, spool_command, wait_until
from tests.mosquitto import Broker
from tests.mqtt_clients import Subscriber

BASE_CONFIG = """\
tasks = ["tests.tasks"]
[defaults]
max_retries = 3
timeout = 60
retry_backoff = 0.1
retry_backoff_max = 0.2
retry_jitter = false
[workers]
rescan_seconds = 1.0
recover_seconds = 0.5
"""


def write_config(path: Path, notify: str) -> Path:
    path.write_text(BASE_CONFIG + notify)
    return path


def mqtt_notify(url: str, extra: str = "") -> str:
    return f"""
[notify]
sinks = ["mqtt"]
on_retry = true
retry_backoff = 0.2
retry_backoff_max = 0.5
{extra}
[notify.mqtt]
url = "{url}"
"""


@pytest.fixture
def start_notify(start_resident: Callable[..., Popen]) -> Callable[[Path], Popen]:
    return lambda config: start_resident("notify", config)


def producer(root: Path, config: Path) -> Spool:
    return Spool(settings=load_settings(str(root), str(config), env={}))


def burst(root: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """Run `spool worker --burst` with `config` to completion."""
    return subprocess.run(
        spool_command(root, "worker", "--burst", config=config),
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def pending_events(root: Path) -> list[str]:
    return names(events_dir(root))


def assert_in_order_per_task(events: list[dict[str, Any]]) -> None:
    last: dict[str, int] = {}
    for event in events:
        assert event["attempts"] > last.get(event["id"], 0), event
        last[event["id"]] = event["attempts"]


# ---- the outbox ------------------------------------------------------------------------------


def test_no_events_without_notify_config(spool_root: Path, app: Spool) -> None:
    app.enqueue("add", args=[1, 2])
    assert run_burst(spool_root).returncode == 0
    assert not events_dir(spool_root).exists()


def test_worker_writes_one_event_per_outcome(spool_root: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", "[notify]\nevents = true\non_retry = true\n")
    app = producer(spool_root, config)
    ok = app.enqueue("add", args=[1, 2])
    bad = app.enqueue("fail", args=["nope"], max_retries=1)
    done = burst(spool_root, config)
    assert done.returncode == 0, done.stderr
    failed = queue_dirs(spool_root, "default").failed
    wait_until(lambda: burst(spool_root, config) and len(names(failed)) == 1, timeout=20)
    events = [
        json.loads((events_dir(spool_root) / n).read_bytes()) for n in pending_events(spool_root)
    ]
    by_task = Counter((e["id"], e["status"]) for e in events)
    assert by_task == {(ok, "done"): 1, (bad, "retry"): 1, (bad, "failed"): 1}
    first = next(e for e in events if e["id"] == ok)
    assert first["result"] == 3 and first["task"] == "add" and first["queue"] == "default"
    assert first["attempts"] == 1 and first["finished_at"] >= first["started_at"] > 0
    assert first["event_id"] + ".json" in pending_events(spool_root)
    failed = next(e for e in events if e["id"] == bad and e["status"] == "failed")
    assert failed["error"]["type"] == "RuntimeError" and failed["attempts"] == 2


def dead_worker_leaves_outcome(root: Path, config: Path, committed: bool) -> tuple[str, str]:
    """Leave what a worker killed between outcome and event leaves: the outcome in done/ and
    its claim in processing/ (owned by a worker whose lock is free). Returns (id, event name)."""
    app = producer(root, config)
    task_id = app.enqueue("add", args=[2, 3])
    dirs = queue_dirs(root, "default")
    (name,) = names(dirs.incoming)
    task = json.loads((dirs.incoming / name).read_bytes())
    claim = f"{'.' if committed else ''}{name}@deadhost-1-abcdef"
    os.rename(dirs.incoming / name, dirs.processing / claim)
    started = time.time() - 1
    outcome = {**task, "attempts": 1, "started_at": started, "finished_at": started + 0.01,
               "worker": "deadhost-1-abcdef", "result": 5}  # fmt: skip
    (dirs.done / f"{task_id}.json").write_bytes(envelope.dump(outcome))
    return task_id, event_name("default", task_id, 1, "done", started + 0.01)


@pytest.mark.parametrize("committed", [False, True])
def test_recovery_writes_the_missing_event_once(
    spool_root: Path, tmp_path: Path, committed: bool
) -> None:
    config = write_config(tmp_path / "c.toml", "[notify]\nevents = true\n")
    task_id, event = dead_worker_leaves_outcome(spool_root, config, committed)
    for _ in range(2):
        done = burst(spool_root, config)
        assert done.returncode == 0, done.stderr
        assert pending_events(spool_root) == [event]
    dirs = queue_dirs(spool_root, "default")
    assert os.listdir(dirs.processing) == [] and names(dirs.done) == [f"{task_id}.json"]
    written = json.loads((events_dir(spool_root) / event).read_bytes())
    assert written["id"] == task_id and written["status"] == "done" and written["result"] == 5


def test_recovery_writes_no_event_that_was_delivered(spool_root: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", "[notify]\nevents = true\n")
    _, event = dead_worker_leaves_outcome(spool_root, config, committed=False)
    sent_dir(spool_root).mkdir(parents=True)
    (sent_dir(spool_root) / event).write_text("{}")  # the notifier delivered it already
    assert burst(spool_root, config).returncode == 0
    assert pending_events(spool_root) == []
    assert os.listdir(queue_dirs(spool_root, "default").processing) == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[notify]\nsinks = ["pager"]\n', "unknown sink 'pager'"),
        ('[notify]\nsinks = ["mqtt"]\n', "needs a [notify.mqtt] table"),
        ('[notify.mqtt]\nurl = "http://x"\n', "url must be mqtt://"),
        ('[notify.mqtt]\nurl = "mqtt://x"\ntopic = "a/{body}"\n', "not {body}"),
        ('[notify.webhook]\nurl = "ftp://x"\n', "http:// or https://"),
        ('[notify.command]\nargv = "echo"\n', "argv must be a non-empty list"),
        ('[mqtt_intake]\nurl = "mqtt://x"\ntopic = "in/q{queue}"\n', "whole level"),
        ('[mqtt_intake]\nurl = "mqtt://x"\nqueue = "a b"\n', "invalid queue name"),
    ],
)
def test_bad_notify_config_is_one_line(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(table)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")):
        load_settings(None, str(path), env={})


# ---- delivery over MQTT --------------------------------------------------------------------


def test_500_tasks_one_completion_each(
    spool_root: Path, tmp_path: Path, mosquitto: Broker, start_worker: Any, start_notify: Any
) -> None:
    config = write_config(tmp_path / "c.toml", mqtt_notify(mosquitto.url))
    subscriber = Subscriber(mosquitto.url)
    try:
        start_notify(config)
        start_worker(config=config)
        start_worker(config=config)
        ids = producer(spool_root, config).enqueue_many(
            [{"task": "add", "args": [i, 1]} for i in range(500)]
        )
        wait_until(lambda: subscriber.count() >= 500, timeout=60)
        time.sleep(0.3)  # a moment for a duplicate to show up, if there were one
        events = subscriber.events()
        assert sorted(e["id"] for e in events) == sorted(ids)
        assert {t for t, _ in subscriber.messages} == {"spool/default/done"}
        assert all(e["result"] == e_args + 1 for e, e_args in zip(
            sorted(events, key=lambda e: ids.index(e["id"])), range(500), strict=True))  # fmt: skip
        wait_until(lambda: pending_events(spool_root) == [], timeout=10)
        assert len(names(sent_dir(spool_root))) == 500
    finally:
        subscriber.close()


def test_broker_outage_loses_nothing_and_sends_nothing_twice(
    spool_root: Path, tmp_path: Path, mosquitto: Broker, start_worker: Any, start_notify: Any
) -> None:
    config = write_config(tmp_path / "c.toml", mqtt_notify(mosquitto.url))
    subscriber = Subscriber(mosquitto.url)
    try:
        start_notify(config)
        start_worker(config=config)
        start_worker(config=config)
        app = producer(spool_root, config)
        mosquitto.stop()
        stopped = time.monotonic()
        tasks = [{"task": "add", "args": [i, 1]} for i in range(300)]
        tasks += [{"task": "fail_until", "args": [str(tmp_path / f"m{i}"), 1]} for i in range(20)]
        ids = app.enqueue_many(tasks)
        done = queue_dirs(spool_root, "default").done
        wait_until(lambda: len(names(done)) == 320, timeout=30)
        wait_until(lambda: len(pending_events(spool_root)) == 340, timeout=10)
        while time.monotonic() - stopped < 10:
            time.sleep(0.1)
        mosquitto.start()
        back = time.monotonic()
        wait_until(lambda: subscriber.count() >= 340, timeout=30)
        lag = time.monotonic() - back
        time.sleep(0.5)
        events = subscriber.events()
        counts = Counter(e["event_id"] for e in events)
        assert len(counts) == 340 and max(counts.values()) == 1
        assert {e["id"] for e in events} == set(ids)
        assert_in_order_per_task(events)
        print(f"delivery lag after the broker came back: {lag:.2f} s for 340 events")
    finally:
        subscriber.close()


# ---- webhook and command -------------------------------------------------------------------


class Receiver:
    """An HTTP server in a thread that records signed events; answers 500 while `failing`."""

    def __init__(self, secret: str, delay: float = 0.0) -> None:
        self.secret, self.delay = secret, delay
        self.failing = False
        self.accepted: list[dict[str, Any]] = []
        self.refused = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = (
                    "sha256=" + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest()
                )
                assert self.headers["X-Spool-Signature"] == expected
                time.sleep(receiver.delay)
                with receiver.lock:
                    if receiver.failing:
                        receiver.refused += 1
                        code = 500
                    else:
                        receiver.accepted.append(json.loads(body))
                        code = 204
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_webhook_down_then_up_with_mqtt_beside_it(
    spool_root: Path, tmp_path: Path, mosquitto: Broker, start_worker: Any, start_notify: Any
) -> None:
    """While the webhook answers 500, MQTT accepts; afterwards each sink has each event once."""
    receiver = Receiver("s3cret")
    receiver.failing = True
    notify = f"""
[notify]
sinks = ["mqtt", "webhook"]
on_retry = true
retry_backoff = 0.1
retry_backoff_max = 0.3
[notify.mqtt]
url = "{mosquitto.url}"
[notify.webhook]
url = "{receiver.url}"
secret = "s3cret"
timeout = 5
"""
    config = write_config(tmp_path / "c.toml", notify)
    subscriber = Subscriber(mosquitto.url)
    try:
        start_notify(config)
        start_worker(config=config)
        app = producer(spool_root, config)
        tasks = [{"task": "add", "args": [i, 1]} for i in range(100)]
        tasks += [{"task": "fail_until", "args": [str(tmp_path / f"m{i}"), 1]} for i in range(10)]
        ids = app.enqueue_many(tasks)
        wait_until(lambda: receiver.refused >= 5, timeout=20)
        wait_until(lambda: len(pending_events(spool_root)) == 120, timeout=20)
        receiver.failing = False
        wait_until(lambda: receiver.count() >= 120 and subscriber.count() >= 120, timeout=30)
        time.sleep(0.5)
        for events in (receiver.accepted, subscriber.events()):
            counts = Counter(e["event_id"] for e in events)
            assert len(counts) == 120 and max(counts.values()) == 1
            assert {e["id"] for e in events} == set(ids)
            assert_in_order_per_task(events)
        wait_until(lambda: pending_events(spool_root) == [], timeout=10)
    finally:
        subscriber.close()
        receiver.close()


def test_command_sink_gets_the_event_on_stdin(
    spool_root: Path, tmp_path: Path, start_notify: Any
) -> None:
    out, marker = tmp_path / "out.jsonl", tmp_path / "refused-once"
    script = (
        "import sys, pathlib; data = sys.stdin.read(); m = pathlib.Path(sys.argv[2])\n"
        "if not m.exists(): m.write_text('x'); sys.exit(3)\n"
        "open(sys.argv[1], 'a').write(data + '\\n')"
    )
    notify = f"""
[notify]
sinks = ["command"]
retry_backoff = 0.1
[notify.command]
argv = {json.dumps([sys.executable, "-c", script, str(out), str(marker)])}
timeout = 10
"""
    config = write_config(tmp_path / "c.toml", notify)
    ids = producer(spool_root, config).enqueue_many(
        [{"task": "add", "args": [i, 0]} for i in range(5)]
    )
    assert burst(spool_root, config).returncode == 0
    start_notify(config)
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 5, timeout=20)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["id"] for e in lines] == ids  # in order of finishing
    assert marker.exists()  # the first run was refused, and offered again


def test_notify_killed_mid_delivery_delivers_everything(
    spool_root: Path, tmp_path: Path, start_notify: Any
) -> None:
    receiver = Receiver("k", delay=0.004)
    notify = (
        f'\n[notify]\nsinks = ["webhook"]\n[notify.webhook]\nurl = "{receiver.url}"\nsecret = "k"\n'
    )
    config = write_config(tmp_path / "c.toml", notify)
    try:
        ids = producer(spool_root, config).enqueue_many(
            [{"task": "add", "args": [i, 0]} for i in range(300)]
        )
        assert burst(spool_root, config).returncode == 0
        assert len(pending_events(spool_root)) == 300
        first = start_notify(config)
        wait_until(lambda: receiver.count() >= 80, timeout=20)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert receiver.count() < 300
        start_notify(config)
        wait_until(lambda: pending_events(spool_root) == [], timeout=30)
        events = receiver.accepted
        assert {e["id"] for e in events} == set(ids)
        by_id: dict[str, dict[str, Any]] = {}
        for event in events:  # a duplicate is the same event, with the same event_id
            assert by_id.setdefault(event["event_id"], event) == event
        assert len(events) - len(by_id) <= 2
    finally:
        receiver.close()


def test_cancel_writes_a_completion_event_with_status_cancelled(
    spool_root: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.toml", "[notify]\nevents = true\n")
    task_id = producer(spool_root, config).enqueue("echo", args=["x"], delay=600)
    done = subprocess.run(
        spool_command(spool_root, "cancel", task_id, config=config),
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [event] = pending_events(spool_root)
    assert event.endswith(f"_default_{task_id}_0_cancelled.json")
    written = json.loads((events_dir(spool_root) / event).read_bytes())
    assert (written["id"], written["status"], written["task"]) == (task_id, "cancelled", "echo")
    assert written["error"]["type"] == "Cancelled"


def test_a_running_task_cancelled_is_its_own_end_event_count_and_never_retried_in_bulk(
    spool_root: Path, tmp_path: Path, start_worker: Callable[..., Popen]
) -> None:
    config = write_config(tmp_path / "c.toml", "[notify]\nevents = true\n")
    app = producer(spool_root, config)
    pid_file = tmp_path / "child.pid"
    task_id = app.enqueue("spawn_and_sleep", args=[str(pid_file), 60])
    start_worker(config=config)
    wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", timeout=30)

    def spool(*args: str) -> subprocess.CompletedProcess[str]:
        command = spool_command(spool_root, *args, config=config)
        return subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60)

    assert spool("cancel", task_id).returncode == 0
    [written] = [
        json.loads((events_dir(spool_root) / e).read_bytes()) for e in pending_events(spool_root)
    ]
    assert (written["id"], written["status"]) == (task_id, "cancelled")
    counts = json.loads(spool("status", "--json").stdout)["queues"]["default"]
    assert (counts["failed"], counts["cancelled"], counts["processing"]) == (0, 1, 0)
    assert task_id not in spool("retry", "--all-failed").stdout
    assert app.state_of(task_id) == "failed" and app.show(task_id)["cancelled_at"] is not None


def test_a_cancel_killed_before_it_dropped_its_claim_is_completed_by_recovery_not_run(
    spool_root: Path, tmp_path: Path
) -> None:
    from spool.inspect.status import spool_status
    from spool.lookup import locate
    from spool.manage import read_task, take_pending

    config = write_config(tmp_path / "c.toml", "[notify]\nevents = true\n")
    task_id = producer(spool_root, config).enqueue("echo", args=["never"])
    dirs = queue_dirs(spool_root, "default")
    found = locate(spool_root, task_id)
    assert found is not None
    taken = take_pending(dirs, found)  # what `spool cancel` does, up to its first write
    assert taken is not None
    task = read_task(taken.path)
    task.update(error={"type": "Cancelled", "message": "by hand", "traceback": ""})
    task.update(finished_at=time.time(), cancelled_at=time.time())
    (dirs.failed / f"{task_id}.json").write_bytes(envelope.dump(task))  # then it was killed
    done = burst(spool_root, config)
    assert done.returncode == 0, done.stderr
    assert os.listdir(dirs.processing) == [] and names(dirs.done) == []
    counts = spool_status(spool_root)["queues"]["default"]
    assert (counts["failed"], counts["cancelled"], counts["incoming"]) == (0, 1, 0)
    [event] = pending_events(spool_root)
    assert event.endswith(f"_{task_id}_0_cancelled.json")
