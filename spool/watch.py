"""Filesystem events as wake-up hints for the worker.

On Linux the worker reads inotify through watchdog's inotify layer (one inotify instance, one
reading thread) and watches only what it needs: arrivals (IN_CREATE, IN_MOVED_TO) in each
queue's incoming/ and delayed/, the queue directory itself (for the .paused marker) and the root
(for new queues). A worker's own work (claims out of incoming/, outcomes into done/) raises no
event it listens to, so each task costs one event per worker, and no move needs pairing.
(watchdog's Observer watching a queue tree costs about a millisecond of CPU per task in event
dispatch, and holds a move out of a watched directory for 0.5 s waiting for its pair.)
Elsewhere, or if that layer is missing, the worker falls back to a watchdog Observer on each
queue tree.

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

inotify_c: Any
try:
    from watchdog.observers import inotify_c
except (ImportError, AttributeError):  # not Linux, or a watchdog without this layer
    inotify_c = None

log = logging.getLogger(__name__)
EVENTS = [FileCreatedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent]
WATCHED_STATES = frozenset({"incoming", "delayed"})
PAUSE_MARKER = ".paused"


class Hints:
    """What the events said since the worker last looked."""

    def __init__(self, wakeup: threading.Event) -> None:
        self.wakeup = wakeup
        self.arrived: deque[tuple[str, str, str]] = deque()  # (queue, state or marker, name)
        self.new_queue = False
        self.rescan = False  # events were lost or a watch vanished: look at the directories

    def add(self, queue: str, state: str, name: str) -> None:
        self.arrived.append((queue, state, name))
        self.wakeup.set()


class Arrivals:
    """A watchdog inotify callback for one watched directory."""

    def __init__(self, hints: Hints, queue: str, state: str) -> None:
        self.hints, self.queue, self.state = hints, queue, state

    def on_event(self, event: Any) -> None:
        name = os.fsdecode(event.name)
        if self.state == "root":
            if event.is_directory:
                self.hints.new_queue = True
                self.hints.wakeup.set()
        elif self.state == "base":
            if name == PAUSE_MARKER:
                self.hints.add(self.queue, PAUSE_MARKER, name)
        elif not event.is_directory:
            self.hints.add(self.queue, self.state, name)

    def on_watch_deleted(self, wd: int) -> None:
        self.hints.rescan = True
        self.hints.wakeup.set()

    def on_queue_overflow(self) -> None:
        self.hints.rescan = True
        self.hints.wakeup.set()


class Watcher:
    """Watches the queues (and the root, for new queues) for one worker."""

    def __init__(self, root: Path, wakeup: threading.Event) -> None:
        self.root = root
        self.hints = Hints(wakeup)
        self.inotify: Any = None
        self.observer: Any = None
        self.watched: set[str] = set()
        self.next_id = 0

    def start(self, queues: list[str], watch_root: bool) -> bool:
        """Start watching; return False (and log) if the OS refuses, so the worker polls."""
        try:
            if inotify_c is not None:
                self.inotify = inotify_c.InotifyFD()
                self.inotify.start()
                if watch_root:
                    self.watch(self.root, "", "root")
            else:
                self.observer = Observer()
                self.observer.daemon = True
                if watch_root:
                    self.observer.schedule(
                        TreeHints(self.root, self.hints), os.fspath(self.root), event_filter=EVENTS
                    )
                self.observer.start()
            for queue in queues:
                self.add(queue)
        except OSError as exc:
            log.warning("filesystem events unavailable (%s): polling every rescan", exc)
            self.stop()
            return False
        return True

    def watch(self, path: Path, queue: str, state: str) -> None:
        constants = inotify_c.InotifyConstants
        mask = constants.IN_CREATE | constants.IN_MOVED_TO
        if state == "base":
            mask |= constants.IN_DELETE | constants.IN_MOVED_FROM
        self.next_id += 1
        self.inotify.add_callback(
            os.fsencode(path), mask, Arrivals(self.hints, queue, state), self.next_id
        )

    def add(self, queue: str) -> None:
        if queue in self.watched or (self.inotify is None and self.observer is None):
            return
        dirs = QueueDirs(self.root, queue)
        try:
            if self.inotify is not None:
                for path, state in (
                    (dirs.incoming, "incoming"),
                    (dirs.delayed, "delayed"),
                    (dirs.base, "base"),
                ):
                    self.watch(path, queue, state)
            else:
                self.observer.schedule(
                    TreeHints(self.root, self.hints),
                    os.fspath(dirs.base),
                    recursive=True,
                    event_filter=EVENTS,
                )
            self.watched.add(queue)
        except OSError as exc:
            log.warning("cannot watch queue %s (%s): it is served by rescans", queue, exc)

    def stop(self) -> None:
        if self.inotify is not None:
            self.inotify.stop()
            self.inotify.join(timeout=5)
            self.inotify = None
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None


class TreeHints(FileSystemEventHandler):
    """The fallback: a watchdog Observer's events of a whole queue tree, turned into hints."""

    def __init__(self, root: Path, hints: Hints) -> None:
        self.root = os.fspath(root)
        self.hints = hints

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = os.fsdecode(event.dest_path if event.event_type == "moved" else event.src_path)
        parent, name = os.path.split(path)
        queue_dir, state = os.path.split(parent)
        if state in WATCHED_STATES and not event.is_directory:
            self.hints.add(os.path.basename(queue_dir), state, name)
        elif name == PAUSE_MARKER:
            self.hints.add(state, PAUSE_MARKER, name)  # here `state` is the queue
        elif event.is_directory and parent == self.root:
            self.hints.new_queue = True
            self.hints.wakeup.set()


class FinishWatch:
    """A context that sets an Event whenever a file arrives in the done/ or failed/ of one or
    more queues.

    Used by wait(): the waiter checks the task's file on each event (and on a slow timer, in
    case events are unavailable), instead of polling.
    """

    def __init__(self, dirs: QueueDirs, *more: QueueDirs) -> None:
        self.queues = (dirs, *more)
        self.changed = threading.Event()
        self.observer: Any = None

    def __enter__(self) -> threading.Event:
        changed = self.changed

        class Arrived(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                changed.set()

        try:
            observer = Observer()
            for directory in [d for dirs in self.queues for d in (dirs.done, dirs.failed)]:
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
