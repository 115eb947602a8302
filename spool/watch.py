"""Filesystem events as wake-up hints for the worker.

One watchdog observer; each queue directory is watched recursively as one watch (one inotify
instance), so a rename between two of its state directories arrives as one paired move at
once. (watchdog holds a move *out of* a watched tree for about 0.5 s waiting for its pair,
and delays every event behind it: watching incoming/ alone makes pick-up ~250 ms.)

Events are hints: the handler records (queue, state, file name) and sets the wake-up event;
the worker's periodic rescan catches anything missed (lost events, inotify overflow).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from spool.layout import QueueDirs, ensure_dir

log = logging.getLogger(__name__)
EVENTS = [FileCreatedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent]
WATCHED_STATES = frozenset({"incoming", "delayed"})
PAUSE_MARKER = ".paused"


class Hints(FileSystemEventHandler):
    """Collects (queue, state, name) of files arriving in incoming/ or delayed/."""

    def __init__(self, root: Path, wakeup: threading.Event) -> None:
        self.root = os.fspath(root)
        self.wakeup = wakeup
        self.arrived: deque[tuple[str, str, str]] = deque()
        self.new_queue = False

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = event.dest_path if event.event_type == "moved" else event.src_path
        path = os.fsdecode(path)
        parent, name = os.path.split(path)
        queue_dir, state = os.path.split(parent)
        if state in WATCHED_STATES and not event.is_directory:
            self.arrived.append((os.path.basename(queue_dir), state, name))
            self.wakeup.set()
        elif name == PAUSE_MARKER:
            self.arrived.append((state, PAUSE_MARKER, name))  # here `state` is the queue
            self.wakeup.set()
        elif event.is_directory and parent == self.root:
            self.new_queue = True
            self.wakeup.set()


class Watcher:
    """Watches the queue directories (and the root, for new queues) for one worker."""

    def __init__(self, root: Path, wakeup: threading.Event) -> None:
        self.root = root
        self.hints = Hints(root, wakeup)
        self.observer: Observer | None = None  # type: ignore[valid-type]
        self.watched: set[str] = set()

    def start(self, queues: list[str], watch_root: bool) -> bool:
        """Start watching; return False (and log) if the OS refuses, so the worker polls."""
        try:
            observer = Observer()
            if watch_root:
                observer.schedule(
                    self.hints, os.fspath(self.root), recursive=False, event_filter=EVENTS
                )
            for queue in queues:
                observer.schedule(
                    self.hints, os.fspath(self.root / queue), recursive=True, event_filter=EVENTS
                )
                self.watched.add(queue)
            observer.daemon = True
            observer.start()
        except OSError as exc:
            log.warning("filesystem events unavailable (%s): polling every rescan", exc)
            return False
        self.observer = observer
        return True

    def add(self, queue: str) -> None:
        if self.observer is None or queue in self.watched:
            return
        try:
            self.observer.schedule(
                self.hints, os.fspath(self.root / queue), recursive=True, event_filter=EVENTS
            )
            self.watched.add(queue)
        except OSError as exc:
            log.warning("cannot watch queue %s (%s): it is served by rescans", queue, exc)

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None


class FinishWatch:
    """A context that sets an Event whenever a file arrives in a queue's done/ or failed/.

    Used by wait(): the waiter checks the task's file on each event (and on a slow timer, in
    case events are unavailable), instead of polling.
    """

    def __init__(self, dirs: QueueDirs) -> None:
        self.dirs = dirs
        self.changed = threading.Event()
        self.observer: Any = None

    def __enter__(self) -> threading.Event:
        changed = self.changed

        class Arrived(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                changed.set()

        try:
            observer = Observer()
            for directory in (self.dirs.done, self.dirs.failed):
                ensure_dir(directory)
                observer.schedule(
                    Arrived(), os.fspath(directory), recursive=False, event_filter=EVENTS
                )
            observer.daemon = True
            observer.start()
            self.observer = observer
        except OSError as exc:
            log.debug("no events for wait (%s): checking every second", exc)
        return changed

    def __exit__(self, *exc: object) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
