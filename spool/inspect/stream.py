"""A live stream of what the workers do, one short line per task event, for `spool up`'s
console: a task claimed (it arrived in processing/), done (in done/), failed (in failed/).

It watches the processing/, done/ and failed/ of every queue (those made later too, looked for
every LOOK_SECONDS) and reads each arriving file for its task name and outcome. It only reads:
a file gone before it is read (a fast task) still gives its line, with what the name tells.
Above MAX_LINES_PER_SECOND lines in a second, the rest of that second is one summary line, so
a busy spool does not flood the terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileCreatedEvent, FileMovedEvent, FileSystemEvent
from watchdog.events import FileSystemEventHandler as Handler
from watchdog.observers import Observer

from spool.envelope import attempt_seconds, id_of_name
from spool.fsio import UnreadableFile, read_regular
from spool.layout import QueueDirs, existing_queues, split_processing

STATES = {"processing": "claimed", "done": "done", "failed": "failed"}
LOOK_SECONDS = 2.0
MAX_LINES_PER_SECOND = 20
READ_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class Arrival:
    """A file that arrived in one of the watched directories."""

    queue: str
    state: str  # processing, done or failed
    path: Path
    at: float


def is_task_file(state: str, name: str) -> bool:
    if name.startswith("."):
        return False  # (a claim whose outcome is being written, a file being written)
    if state == "processing":
        return split_processing(name) is not None
    return name.endswith(".json")


def describe(arrival: Arrival) -> str:
    """The line of one arrival: time, event, queue, task name, id, and what ended it."""
    name = arrival.path.name
    task = read_task(arrival.path)
    if arrival.state == "processing":
        incoming, worker = split_processing(name) or (name, "?")
        task_id = str(task.get("id") or id_of_name(incoming))
        if "unreadable" in task:  # RACE: a fast task has finished already
            task = read_task(
                QueueDirs(arrival.path.parents[2], arrival.queue).done / f"{task_id}.json"
            )
            task["attempts"] = max(0, int(task.get("attempts", 1) or 1) - 1)
        detail = f"attempt {int(task.get('attempts', 0) or 0) + 1} on {worker}"
    else:
        task_id = str(task.get("id") or name.removesuffix(".json"))
        detail = outcome_detail(arrival.state, task)
    clock = time.strftime("%H:%M:%S", time.localtime(arrival.at))
    event = STATES[arrival.state]
    what = str(task.get("task") or "?")
    return f"{clock} {event:<7} {arrival.queue}  {what}  {task_id}  {detail}".rstrip()


def outcome_detail(state: str, task: dict[str, Any]) -> str:
    seconds = attempt_seconds(task)
    took = "" if seconds is None else f"in {seconds:.2f}s"
    if state == "done":
        return took
    error = task.get("error")
    if isinstance(error, dict):
        message = (
            str(error.get("message", "")).splitlines()[0][:120] if error.get("message") else ""
        )
        return f"{error.get('type')}: {message}".rstrip(": ")
    return "rejected (see spool ls failed)" if "unreadable" not in task else ""


def read_task(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_regular(path, READ_LIMIT)[0])
    except (OSError, ValueError, UnreadableFile):
        return {"unreadable": True}
    return data if isinstance(data, dict) else {"unreadable": True}


class TaskStream:
    """Writes a line for each task event under `root` until `stopping` is set."""

    def __init__(self, root: Path, write: Callable[[str], None]) -> None:
        self.root = root
        self.write = write
        self.arrivals: queue.SimpleQueue[Arrival] = queue.SimpleQueue()
        self.watched: set[str] = set()

    def run(self, stopping: threading.Event) -> None:
        observer = Observer()
        observer.daemon = True
        observer.start()
        try:
            while not stopping.is_set():
                self.watch_new_queues(observer)
                self.drain(time.monotonic() + LOOK_SECONDS, stopping)
        finally:
            observer.stop()
            observer.join(timeout=5)

    def watch_new_queues(self, observer: Any) -> None:
        for name in existing_queues(self.root):
            if name in self.watched:
                continue
            dirs = QueueDirs(self.root, name)
            with contextlib.suppress(OSError):  # (a queue half made: tried again later)
                for state in STATES:
                    handler = Arrived(self.arrivals, name, state)
                    observer.schedule(handler, os.fspath(dirs.state(state)), recursive=False)
                self.watched.add(name)

    def drain(self, until: float, stopping: threading.Event) -> None:
        """Write the lines of the arrivals until `until`, at most MAX_LINES_PER_SECOND a
        second; the rest of a second is counted and summed up in one line."""
        second, shown, skipped = int(time.monotonic()), 0, Counter[str]()
        while time.monotonic() < until and not stopping.is_set():
            try:
                arrival = self.arrivals.get(timeout=0.2)
            except queue.Empty:
                arrival = None
            if int(time.monotonic()) != second:
                self.summarize(skipped)
                second, shown, skipped = int(time.monotonic()), 0, Counter()
            if arrival is None:
                continue
            if shown < MAX_LINES_PER_SECOND:
                self.write(describe(arrival))
                shown += 1
            else:
                skipped[STATES[arrival.state]] += 1
        self.summarize(skipped)

    def summarize(self, skipped: Counter[str]) -> None:
        if skipped:
            counts = ", ".join(f"{n} {event}" for event, n in sorted(skipped.items()))
            self.write(f"{time.strftime('%H:%M:%S')} ... and {counts} (not shown: too many)")


class Arrived(Handler):
    """Puts each file arriving in one directory on the stream's queue."""

    def __init__(self, arrivals: queue.SimpleQueue[Arrival], queue_name: str, state: str) -> None:
        self.arrivals, self.queue_name, self.state = arrivals, queue_name, state

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent):
            path = os.fsdecode(event.dest_path)
        elif isinstance(event, FileCreatedEvent):
            path = os.fsdecode(event.src_path)
        else:
            return
        if os.path.basename(path) and is_task_file(self.state, os.path.basename(path)):
            self.arrivals.put(Arrival(self.queue_name, self.state, Path(path), time.time()))
