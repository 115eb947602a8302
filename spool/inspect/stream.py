"""A live stream of what the workers do, one short line per task event, for `spool up`'s
console: a task claimed (it arrived in processing/), done (in done/), failed (in failed/).

It watches the processing/, done/ and failed/ of every queue (those made later too, looked for
every LOOK_SECONDS; what a new queue's tasks did before it was seen is told when it is) and
reads each arriving file for its task name and outcome. It only reads: a file gone before it
is read (a fast task) still gives its line, from where the task went.
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
from spool.lookup import finished

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


def describe(arrival: Arrival, task: dict[str, Any] | None = None) -> str:
    """The line of one arrival: time, event, queue, task name, id, and what ended it (`task`:
    its file, when already read)."""
    name = arrival.path.name
    task = read_task(arrival.path) if task is None else task
    if arrival.state == "processing":
        worker = (split_processing(name) or (name, "?"))[1]
        task_id = str(task.get("id") or claimed_id(name))
        if "unreadable" in task:
            task = moved_on(arrival, task_id)
        detail = f"attempt {int(task.get('attempts', 0) or 0) + 1} on {worker}"
    else:
        task_id = str(task.get("id") or name.removesuffix(".json"))
        detail = outcome_detail(arrival.state, task)
    return line(arrival.at, STATES[arrival.state], arrival.queue, task, task_id, detail)


def claimed_id(entry: str) -> str:
    """The id of the task a processing/ entry (a claim) holds."""
    incoming, _ = split_processing(entry) or (entry, "")
    return id_of_name(incoming)


def describe_claim_of(ended: Arrival, task: dict[str, Any]) -> str | None:
    """The claimed line of a task that ended (`task`: its file) before the stream saw its
    claim (None for a file rejected without running)."""
    if not task.get("started_at"):
        return None
    task_id = str(task.get("id") or ended.path.name.removesuffix(".json"))
    detail = f"attempt {int(task.get('attempts', 1) or 1)} on {task.get('worker') or '?'}"
    return line(float(task["started_at"]), "claimed", ended.queue, task, task_id, detail)


def line(
    at: float, event: str, queue_name: str, task: dict[str, Any], task_id: str, detail: str
) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(at))
    what = str(task.get("task") or "?")
    return f"{clock} {event:<7} {queue_name}  {what}  {task_id}  {detail}".rstrip()


def moved_on(claimed: Arrival, task_id: str) -> dict[str, Any]:
    """The task of a claim no longer there, as it was when claimed. RACE: a fast task moves on
    before its line is written: its claim is hidden while its outcome is written (the same
    file), then the outcome is in done/ or failed/ (one attempt more)."""
    hidden = read_task(claimed.path.with_name(f".{claimed.path.name}"))
    if "unreadable" not in hidden:
        return hidden
    ended = finished(QueueDirs(claimed.path.parents[2], claimed.queue), task_id)
    task = {} if ended is None else read_task(ended.path)
    if "unreadable" in task:
        return {}
    task["attempts"] = max(0, int(task.get("attempts", 1) or 1) - 1)
    return task


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
        self.since: float | None = None  # (wall clock of the first look)
        self.caught_up: set[Path] = set()  # told by a catch-up: their events are not told

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
        """Watch the queues made since the last look; tell what their tasks did before they
        were watched, since the first look (a new queue's first tasks: see catch_up)."""
        first = self.since is None
        if first:
            self.since = time.time()
        self.caught_up.clear()  # (their events came within the last look's drain)
        for name in existing_queues(self.root):
            if name in self.watched:
                continue
            dirs = QueueDirs(self.root, name)
            with contextlib.suppress(OSError):  # (a queue half made: tried again later)
                for state in STATES:
                    handler = Arrived(self.arrivals, name, state)
                    observer.schedule(handler, os.fspath(dirs.state(state)), recursive=False)
                self.watched.add(name)
                if not first:
                    self.catch_up(name, dirs)

    def catch_up(self, queue_name: str, dirs: QueueDirs) -> None:
        """Tell the task files that arrived in a queue just watched since the first look (by
        ctime, which a rename sets); a task that ended already gets its claimed line too.
        RACE: a file arriving meanwhile has both an event and a line here; its event is not
        told (see told_already), nor a claim scanned here twice."""
        found = [a for state in STATES for a in self.arrived_since(queue_name, state, dirs)]
        claims = {claimed_id(a.path.name) for a in found if a.state == "processing"}
        shown, skipped = 0, Counter[str]()
        for arrival in sorted(found, key=lambda a: a.at):
            self.caught_up.add(arrival.path)
            if shown >= MAX_LINES_PER_SECOND:
                skipped[STATES[arrival.state]] += 1
                continue
            task = read_task(arrival.path)
            claim = None if arrival.state == "processing" else describe_claim_of(arrival, task)
            if claim is not None and arrival.path.name.removesuffix(".json") not in claims:
                self.write(claim)
            self.write(describe(arrival, task))
            shown += 1
        self.summarize(skipped)

    def arrived_since(self, queue_name: str, state: str, dirs: QueueDirs) -> list[Arrival]:
        assert self.since is not None
        found = []
        with contextlib.suppress(OSError), os.scandir(dirs.state(state)) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    at = entry.stat(follow_symlinks=False).st_ctime
                    if is_task_file(state, entry.name) and at >= self.since:
                        found.append(Arrival(queue_name, state, Path(entry.path), at))
        return found

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
            if arrival is None or self.told_already(arrival):
                continue
            if shown < MAX_LINES_PER_SECOND:
                self.write(describe(arrival))
                shown += 1
            else:
                skipped[STATES[arrival.state]] += 1
        self.summarize(skipped)

    def told_already(self, arrival: Arrival) -> bool:
        if arrival.path not in self.caught_up:
            return False
        self.caught_up.discard(arrival.path)
        return True

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
