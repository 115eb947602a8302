"""Enqueue: where task files land, what they hold, and how bulk and unique enqueue behave."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from spool import Spool
from spool.errors import InvalidQueueName, InvalidTask
from spool.layout import CANONICAL_RE
from tests.conftest import names


def only_file(directory: Path) -> Path:
    entries = names(directory)
    assert len(entries) == 1, entries
    return directory / entries[0]


def test_enqueue_writes_one_complete_task_file_into_incoming(app: Spool, spool_root: Path) -> None:
    task_id = app.enqueue("add", args=[1, 2], kwargs={"c": 3})
    path = only_file(spool_root / "default" / "incoming")
    task = json.loads(path.read_bytes())
    assert CANONICAL_RE.fullmatch(path.name)
    assert task["id"] == task_id and path.name.endswith(f"_{task_id}.json")
    assert task["task"] == "add" and task["args"] == [1, 2] and task["kwargs"] == {"c": 3}
    assert task["attempts"] == 0 and task["enqueued_at"] > 0
    assert names(spool_root / "default" / "tmp") == []


def test_new_directories_and_files_have_group_access(app: Spool, spool_root: Path) -> None:
    old = os.umask(0o077)
    try:
        app.enqueue("echo", args=["x"], queue="grouped")
    finally:
        os.umask(old)
    incoming = spool_root / "grouped" / "incoming"
    assert stat.S_IMODE(incoming.stat().st_mode) == 0o770
    assert stat.S_IMODE(only_file(incoming).stat().st_mode) == 0o660


def test_delayed_task_is_written_to_delayed_with_its_due_time_in_the_name(
    app: Spool, spool_root: Path
) -> None:
    task_id = app.enqueue("echo", args=[1], delay=60)
    entry = only_file(spool_root / "default" / "delayed")
    task = json.loads(entry.read_bytes())
    due_us = int(entry.name.partition("@")[0])
    assert task["id"] == task_id
    assert abs(due_us / 1e6 - (task["enqueued_at"] + 60)) < 0.01
    assert names(spool_root / "default" / "incoming") == []


def test_not_before_in_the_past_goes_straight_to_incoming(app: Spool, spool_root: Path) -> None:
    app.enqueue("echo", not_before="2001-01-01T00:00:00+00:00")
    assert len(names(spool_root / "default" / "incoming")) == 1


def test_higher_priority_sorts_first_then_first_enqueued(app: Spool, spool_root: Path) -> None:
    low = app.enqueue("echo", args=["low"])
    high = app.enqueue("echo", args=["high"], priority=9)
    low2 = app.enqueue("echo", args=["low2"])
    order = [CANONICAL_RE.fullmatch(n).group(3) for n in names(spool_root / "default" / "incoming")]  # type: ignore[union-attr]
    assert order == [high, low, low2]


def test_enqueue_many_writes_all_tasks_in_order(app: Spool, spool_root: Path) -> None:
    ids = app.enqueue_many([{"task": "echo", "args": [i]} for i in range(50)])
    incoming = names(spool_root / "default" / "incoming")
    assert len(ids) == len(set(ids)) == 50
    assert [CANONICAL_RE.fullmatch(n).group(3) for n in incoming] == ids  # type: ignore[union-attr]


def test_enqueue_many_validates_everything_before_writing_anything(
    app: Spool, spool_root: Path
) -> None:
    tasks = [{"task": "echo"}, {"task": "echo", "priority": 12}]
    with pytest.raises(InvalidTask, match=r"task 2: .*priority"):
        app.enqueue_many(tasks)
    assert names(spool_root / "default" / "incoming") == []


def test_enqueue_many_honours_each_tasks_queue(app: Spool, spool_root: Path) -> None:
    app.enqueue_many([{"task": "echo", "queue": "a"}, {"task": "echo", "queue": "b"}])
    assert len(names(spool_root / "a" / "incoming")) == 1
    assert len(names(spool_root / "b" / "incoming")) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 10}, "priority"),
        ({"priority": True}, "priority"),
        ({"id": "../../etc/passwd"}, "id"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": 0}, "timeout"),
        ({"delay": "soon"}, "delay"),
        ({"not_before": "tomorrow"}, "not_before"),
        ({"unique_key": ""}, "unique_key"),
    ],
)
def test_invalid_options_are_refused_with_the_field_named(
    app: Spool, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidTask, match=message):
        app.enqueue("echo", **options)


def test_arguments_that_are_not_json_are_refused(app: Spool, spool_root: Path) -> None:
    with pytest.raises(InvalidTask, match="JSON"):
        app.enqueue("echo", args=[object()])
    assert names(spool_root / "default" / "incoming") == []


def test_invalid_queue_name_is_refused(app: Spool) -> None:
    with pytest.raises(InvalidQueueName):
        app.enqueue("echo", queue="../etc")


def test_second_task_with_a_held_unique_key_is_not_enqueued(app: Spool, spool_root: Path) -> None:
    first = app.enqueue("echo", args=[1], unique_key="report-2026-11")
    second = app.enqueue("echo", args=[2], unique_key="report-2026-11")
    other = app.enqueue("echo", args=[3], unique_key="report-2026-12")
    assert second == first and other != first
    assert len(names(spool_root / "default" / "incoming")) == 2


def test_unique_key_whose_owner_vanished_is_taken_over(app: Spool, spool_root: Path) -> None:
    first = app.enqueue("echo", unique_key="k")
    for name in names(spool_root / "default" / "incoming"):
        os.unlink(spool_root / "default" / "incoming" / name)  # lost without releasing the key
    keys = spool_root / "default" / ".unique"
    for key in names(keys):
        os.utime(keys / key, (0, 0))  # older than the crash window
    second = app.enqueue("echo", unique_key="k")
    assert second != first
    assert len(names(spool_root / "default" / "incoming")) == 1


def test_a_unique_key_another_producer_has_not_finished_writing_is_not_taken_over(
    app: Spool, spool_root: Path
) -> None:
    """RACE: another host's producer created the key file and has not written it yet (or this
    host's attribute cache still shows it empty). Seen on JuiceFS: two tasks for one key."""
    app.enqueue("echo", unique_key="other")  # the queue's directories
    key = spool_root / "default" / ".unique" / hashlib.sha256(b"k").hexdigest()[:40]
    key.touch()  # created, not yet written
    holder = {"id": "20261202T000000.000000Z-abc", "name": "x.json", "key": "k"}
    writer = threading.Timer(0.3, lambda: key.write_text(json.dumps(holder)))
    writer.start()
    try:
        assert app.enqueue("echo", unique_key="k") == holder["id"]
    finally:
        writer.join()
    assert len(names(spool_root / "default" / "incoming")) == 1  # only the "other" task


def test_task_handle_delay_enqueues_on_the_tasks_queue(spool_root: Path) -> None:
    app = Spool(root=spool_root)

    @app.task(queue="mail")
    def send_email(to: str, subject: str = "") -> str:
        return to

    task_id = send_email.delay("a@b.c", subject="hi")
    path = only_file(spool_root / "mail" / "incoming")
    task = json.loads(path.read_bytes())
    assert task["id"] == task_id
    assert task["args"] == ["a@b.c"] and task["kwargs"] == {"subject": "hi"}
    assert send_email("x@y.z") == "x@y.z"  # still a plain function when called


def test_task_handle_enqueue_takes_options(spool_root: Path) -> None:
    app = Spool(root=spool_root)

    @app.task()
    def close_order(order_id: int) -> None:
        return None

    close_order.enqueue(args=[42], delay=1800, priority=9)
    entry = only_file(spool_root / "default" / "delayed")
    assert json.loads(entry.read_bytes())["priority"] == 9


def test_eager_app_runs_the_task_at_once(tmp_path: Path) -> None:
    app = Spool(root=tmp_path, eager=True)

    @app.task()
    def double(x: int) -> int:
        return 2 * x

    @app.task()
    def broken() -> None:
        raise ValueError("nope")

    assert app.wait(double.delay(21)) == 42
    failing = broken.delay()
    with pytest.raises(Exception, match="nope"):
        app.wait(failing)
    assert not (tmp_path / "default").exists()
