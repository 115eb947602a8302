"""`spool mqtt-intake` against a real Mosquitto broker: tasks in, rejects kept, kill -9."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spool.layout import CANONICAL_RE, queue_dirs
from spool.stats import load_all
from tests.conftest import Popen, names, wait_until
from tests.mosquitto import Broker
from tests.mqtt_clients import Publisher

CONFIG = """\
tasks = ["tests.tasks"]
[workers]
rescan_seconds = 1.0
recover_seconds = 0.5
[mqtt_intake]
url = "{url}"
client_id = "intake-{tag}"
"""


@pytest.fixture
def start_intake(start_resident: Callable[..., Popen]) -> Callable[[Path], Popen]:
    return lambda config: start_resident("mqtt-intake", config, ready="subscribed to")


@pytest.fixture
def config(tmp_path: Path, mosquitto: Broker) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(url=mosquitto.url, tag=tmp_path.name[-20:]))
    return path


@pytest.fixture
def publisher(mosquitto: Broker) -> Iterator[Publisher]:
    client = Publisher(mosquitto.url)
    yield client
    client.close()


def ids_in(directory: Path) -> list[str]:
    found = []
    for name in names(directory):
        match = CANONICAL_RE.fullmatch(name)
        found.append(match.group(3) if match else name)
    return found


def test_1000_messages_become_1000_done_tasks(
    spool_root: Path, config: Path, publisher: Publisher, start_intake: Any, start_worker: Any
) -> None:
    start_intake(config)
    start_worker(config=config)
    start_worker(config=config)
    mids = [
        publisher.publish(
            "spool/enqueue/default",
            json.dumps({"task": "add", "args": [i, 1], "id": f"m{i}"}).encode(),
        )
        for i in range(1000)
    ]
    publisher.wait_acked(mids)
    done = queue_dirs(spool_root, "default").done
    wait_until(lambda: len(names(done)) == 1000, timeout=60)
    sample = json.loads((done / "m999.json").read_bytes())
    assert sample["result"] == 1000 and sample["attempts"] == 1


def test_invalid_messages_are_kept_in_failed_with_the_reason(
    spool_root: Path, config: Path, publisher: Publisher, start_intake: Any
) -> None:
    start_intake(config)
    bad = [
        ("spool/enqueue/mail", b"{not json"),
        ("spool/enqueue/mail", b"[1, 2]"),
        ("spool/enqueue/mail", b'{"task": "add", "priority": 42}'),
        ("spool/enqueue/mail", b"\xff\xfe"),
        ("spool/enqueue/no.dots", b'{"task": "add"}'),
    ]
    mids = [publisher.publish(topic, payload) for topic, payload in bad]
    mids.append(
        publisher.publish("spool/enqueue/mail", b'{"task": "add", "args": [1, 2], "id": "ok"}')
    )
    publisher.wait_acked(mids)
    mail, default = queue_dirs(spool_root, "mail"), queue_dirs(spool_root, "default")
    wait_until(lambda: ids_in(mail.incoming) == ["ok"], timeout=20)
    notes = [json.loads((d.failed / n).read_bytes()) for d in (mail, default)
             for n in names(d.failed) if n.endswith(".error.json")]  # fmt: skip
    reasons = sorted(note["reason"] for note in notes)
    assert len(reasons) == 5
    assert any("invalid JSON" in r for r in reasons)
    assert any("must hold a JSON object" in r for r in reasons)
    assert any("priority" in r for r in reasons)
    assert any("not UTF-8" in r for r in reasons)
    assert any("invalid queue name 'no.dots'" in r for r in reasons)
    stored = {n for n in names(mail.failed) if not n.endswith(".error.json")}
    kept = {(mail.failed / n).read_bytes() for n in stored}
    assert kept == {payload for topic, payload in bad if topic.endswith("mail")}
    assert all(note["topic"].startswith("spool/enqueue/") for note in notes)


def test_rejected_messages_count_as_rejected_like_rejected_task_files(
    spool_root: Path, config: Path, publisher: Publisher, start_intake: Any
) -> None:
    start_intake(config)
    mids = [publisher.publish("spool/enqueue/mail", payload) for payload in (b"{", b"[]")]
    publisher.wait_acked(mids)
    wait_until(lambda: len(names(queue_dirs(spool_root, "mail").failed)) == 4, timeout=20)

    def rejected() -> int:
        counted = load_all(spool_root).get("mail")
        return counted.counts["rejected"] if counted is not None else 0

    wait_until(lambda: rejected() == 2, timeout=10)


def test_intake_killed_mid_stream_loses_no_acknowledged_message(
    spool_root: Path, config: Path, publisher: Publisher, start_intake: Any
) -> None:
    first = start_intake(config)
    incoming = queue_dirs(spool_root, "default").incoming
    mids = []
    for i in range(1000):
        payload = json.dumps({"task": "add", "args": [i, 0], "id": f"k{i}"}).encode()
        mids.append(publisher.publish("spool/enqueue/default", payload))
        if i == 300:
            wait_until(lambda: len(names(incoming)) >= 100, timeout=20)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
    publisher.wait_acked(mids)  # the broker holds them for the intake's session
    start_intake(config)
    wait_until(lambda: len(set(ids_in(incoming))) == 1000, timeout=60)
    counts = Counter(ids_in(incoming))
    assert set(counts) == {f"k{i}" for i in range(1000)}
    assert max(counts.values()) == 1  # a redelivered copy of a written message is skipped


def test_a_fixed_topic_routes_tasks_to_their_declared_queue_and_refuses_unknown_names(
    spool_root: Path,
    tmp_path: Path,
    mosquitto: Broker,
    publisher: Publisher,
    start_intake: Any,
    start_worker: Any,
) -> None:
    config = tmp_path / "fixed.toml"
    config.write_text(
        CONFIG.format(url=mosquitto.url, tag=tmp_path.name[-20:]) + 'topic = "spool/in"\n'
    )
    start_worker("-q", "mail", config=config)
    wait_until(lambda: (spool_root / ".tasks").is_dir() and names(spool_root / ".tasks"), 30)
    start_intake(config)
    mids = [
        publisher.publish("spool/in", b'{"task": "send_mail", "args": ["m@b.c"], "id": "m1"}'),
        publisher.publish("spool/in", b'{"task": "send_mial", "args": ["m@b.c"], "id": "m2"}'),
    ]
    publisher.wait_acked(mids)
    mail, default = queue_dirs(spool_root, "mail"), queue_dirs(spool_root, "default")
    wait_until(lambda: names(mail.done) == ["m1.json"], timeout=20)
    notes = [n for n in names(default.failed) if n.endswith(".error.json")]
    assert len(notes) == 1
    reason = json.loads((default.failed / notes[0]).read_bytes())["reason"]
    assert "unknown task 'send_mial'" in reason and "did you mean send_mail" in reason
