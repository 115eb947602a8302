"""The worker's event hints, on watchdog's inotify layer and on the Observer fallback."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spool import watch
from spool.layout import QueueDirs
from spool.watch import PAUSE_MARKER, Watcher
from tests.conftest import wait_until


@pytest.fixture(params=["inotify", "observer"])
def watcher(
    request: pytest.FixtureRequest, spool_root: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Watcher]:
    if request.param == "observer":
        monkeypatch.setattr(watch, "inotify_c", None)
    QueueDirs(spool_root, "default").create()
    started = Watcher(spool_root, threading.Event())
    assert started.start(["default"], watch_root=True)
    yield started
    started.stop()


def drop(dirs: QueueDirs, state: str, name: str) -> None:
    tmp = dirs.tmp / f".{name}"
    tmp.write_text('{"task": "echo"}')
    os.rename(tmp, dirs.state(state) / name)


def test_a_file_renamed_into_incoming_is_a_hint(watcher: Watcher, spool_root: Path) -> None:
    drop(QueueDirs(spool_root, "default"), "incoming", "a.json")
    wait_until(lambda: ("default", "incoming", "a.json") in watcher.hints.arrived, timeout=5)
    assert watcher.hints.wakeup.is_set()


def test_a_file_in_delayed_is_a_hint(watcher: Watcher, spool_root: Path) -> None:
    drop(QueueDirs(spool_root, "default"), "delayed", "0000000000000001@a.json")
    wait_until(
        lambda: ("default", "delayed", "0000000000000001@a.json") in watcher.hints.arrived, 5
    )


def test_the_pause_marker_is_a_hint(watcher: Watcher, spool_root: Path) -> None:
    (spool_root / "default" / PAUSE_MARKER).write_text("{}")
    wait_until(lambda: ("default", PAUSE_MARKER, PAUSE_MARKER) in watcher.hints.arrived, 5)


def test_a_new_queue_directory_is_noticed(watcher: Watcher, spool_root: Path) -> None:
    (spool_root / "mail").mkdir()
    wait_until(lambda: watcher.hints.new_queue, timeout=5)


def test_a_workers_own_outcomes_raise_no_hint(spool_root: Path) -> None:
    dirs = QueueDirs(spool_root, "default").create()
    started = Watcher(spool_root, threading.Event())
    assert started.start(["default"], watch_root=False)
    try:
        drop(dirs, "done", "x.json")
        drop(dirs, "incoming", "y.json")  # a marker event after it: hints keep their order
        wait_until(lambda: ("default", "incoming", "y.json") in started.hints.arrived, 5)
        assert all(state != "done" for _, state, _ in started.hints.arrived)
    finally:
        started.stop()
