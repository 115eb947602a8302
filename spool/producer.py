"""Enqueue: a TaskFile goes through tmp/ into incoming/ (or delayed/ when not due yet).

Durability: the file's data is synced before the rename makes it visible, and the directory
after, so a task exists completely or not at all and survives a crash once enqueue returns.
Bulk enqueue writes every file, syncs the filesystem once, renames them all, and syncs each
target directory once: the same guarantee at a fraction of the cost per task.

unique_key: the task holds its key (see spool.unique) from before its file is written; a task
whose key another pending task holds is not written, and its producer gets the holder's id.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spool import envelope
from spool.config import Settings
from spool.envelope import FOLLOW_UP_FIELDS, FieldError, TaskDict
from spool.errors import BadArguments, InvalidTask, Refused, UnknownTaskName
from spool.faults import reported_as
from spool.fsio import write_atomic, write_many_atomic
from spool.layout import DEFAULT_QUEUE, QueueDirs, canonical_name, delayed_name, queue_dirs
from spool.manifest import Catalog
from spool.signature import binding_error, render
from spool.unique import release_unique_key, take_unique_key

OPTION_FIELDS = (
    "id",
    "priority",
    "delay",
    "not_before",
    "max_retries",
    "timeout",
    "unique_key",
    "then",
    "then_on_failure",
)


@dataclass(frozen=True)
class Prepared:
    """A validated task ready to be written: where it goes and what it holds."""

    dirs: QueueDirs
    task: TaskDict
    dest: Path


class Clock:
    """Enqueue instants in µs that strictly increase within this process (FIFO by name)."""

    def __init__(self) -> None:
        self.last_us = 0
        self.lock = threading.Lock()

    def next_us(self, now: float) -> int:
        with self.lock:
            self.last_us = max(int(now * 1_000_000), self.last_us + 1)
            return self.last_us


CLOCK = Clock()


def build_task(
    name: str,
    args: Iterable[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> TaskDict:
    """A task dict from a name, arguments and options (None options are left out)."""
    unknown = set(options) - set(OPTION_FIELDS) - {"queue"}
    if unknown:
        raise InvalidTask(f"unknown enqueue option {sorted(unknown)[0]!r}")
    task: TaskDict = {"task": name, "args": list(args or []), "kwargs": dict(kwargs or {})}
    for key in OPTION_FIELDS:
        if options.get(key) is not None:
            task[key] = options[key]
    return task


def admit(catalog: Catalog, task: Mapping[str, Any], queue: str | None, check: bool) -> TaskDict:
    """The task as the published tasks route it: its declared queue (unless `queue` or its own
    `queue` field names one) and priority. With `check`, once any task is published, an
    unknown name or arguments that do not bind are refused.

    Raises: UnknownTaskName, BadArguments.
    """
    admitted: TaskDict = dict(task)
    name = task.get("task")
    if check and catalog.exists:
        check_follow_up_names(catalog, task)
    entry = catalog.entry(name) if isinstance(name, str) else None
    if entry is None:
        if check and catalog.exists and isinstance(name, str) and name:
            raise UnknownTaskName(name, catalog.suggest(name))
        return admitted
    if check:
        args, kwargs = task.get("args", []), task.get("kwargs", {})
        if isinstance(args, list) and isinstance(kwargs, dict):
            reason = binding_error(entry.params, args, kwargs)
            if reason is not None:
                raise BadArguments(f"{name}{render(entry.params)}: {reason}")
    if not (queue or task.get("queue")):
        admitted["queue"] = entry.queue
    if "priority" not in task and envelope.is_int(entry.priority):
        admitted["priority"] = entry.priority
    return admitted


def check_follow_up_names(catalog: Catalog, task: Mapping[str, Any]) -> None:
    """Refuse follow-ups (`then`, `then_on_failure`, at any depth) that name a task no worker
    serves; their arguments are not checked (a follow-up may receive its parent's result).
    Raises: UnknownTaskName."""
    for key in FOLLOW_UP_FIELDS:
        specs = task.get(key)
        for spec in specs if isinstance(specs, list) else []:
            if not isinstance(spec, dict):
                continue
            name = spec.get("task")
            if isinstance(name, str) and name and catalog.entry(name) is None:
                raise UnknownTaskName(name, catalog.suggest(name))
            check_follow_up_names(catalog, spec)


def prepare(settings: Settings, task: Mapping[str, Any], queue: str | None, now: float) -> Prepared:
    """Validate a task dict, stamp it, and decide its destination. Raises: InvalidTask."""
    return prepare_at(settings.root, task, queue, now)


def prepare_at(root: Path, task: Mapping[str, Any], queue: str | None, now: float) -> Prepared:
    """`prepare` on the spool at `root`. Raises: InvalidTask."""
    queue_name = queue or task.get("queue") or DEFAULT_QUEUE
    if not isinstance(queue_name, str):
        raise InvalidTask("field 'queue' must be a string")
    dirs = queue_dirs(root, queue_name)
    stamped: TaskDict = {k: v for k, v in task.items() if k != "queue"}
    try:
        envelope.validate_fields(stamped)
    except FieldError as exc:
        raise InvalidTask(str(exc)) from None
    name = stamp(stamped, now)
    due = envelope.due_at(stamped)
    if due > stamped["enqueued_at"]:
        dest = dirs.delayed / delayed_name(int(due * 1_000_000), name)
    else:
        dest = dirs.incoming / name
    return Prepared(dirs, stamped, dest)


def stamp(task: TaskDict, now: float) -> str:
    """Stamp `task` as enqueued now (an instant that strictly increases in this process), with
    an id and attempts when it has none; return its name in incoming/."""
    enqueued_us = CLOCK.next_us(now)
    task["enqueued_at"] = enqueued_us / 1_000_000
    task.setdefault("id", envelope.new_id(now))
    task.setdefault("attempts", 0)
    return canonical_name(envelope.priority_of(task), enqueued_us, str(task["id"]))


_MADE: set[Path] = set()  # queue directories this process created or found complete


def made(dirs: QueueDirs) -> QueueDirs:
    """`dirs.create()` once per process and queue (enqueue retries it if they vanish)."""
    if dirs.base not in _MADE:
        dirs.create()
        _MADE.add(dirs.base)
    return dirs


def enqueue(
    settings: Settings,
    task: Mapping[str, Any],
    queue: str | None = None,
    *,
    catalog: Catalog | None = None,
    check: bool = True,
) -> str:
    """Write one task durably; return its id (or the holder's id for a held unique_key).

    The task is admitted against `catalog` (read from the root when not given): see admit.
    Raises: InvalidTask (UnknownTaskName, BadArguments), InvalidQueueName; DiskFault (full
    disk, quota, I/O error: nothing of the task is left); OSError.
    """
    catalog = Catalog.load(settings.root) if catalog is None else catalog
    admitted = admit(catalog, task, queue, check)
    prepared = prepare(settings, admitted, queue, time.time())
    with reported_as("enqueue", prepared.dirs.base):
        dirs = made(prepared.dirs)
        data = envelope.dump(prepared.task)
        key = prepared.task.get("unique_key")
        if key is not None:
            holder = take_for(prepared, key)
            if holder is not None:
                return holder
        with keys_released_on_error([prepared]):
            try:
                write_atomic(data, dirs.tmp, prepared.dest)
            except FileNotFoundError:  # the queue's directories were removed: make them again
                _MADE.discard(dirs.base)
                write_atomic(data, made(dirs).tmp, prepared.dest)
    return str(prepared.task["id"])


@contextmanager
def keys_released_on_error(written: list[Prepared]) -> Iterator[None]:
    """Give up the unique keys taken for tasks whose write failed (each is theirs alone)."""
    try:
        yield
    except BaseException:
        for prepared in written:
            key = prepared.task.get("unique_key")
            if key is not None:
                with contextlib.suppress(OSError):
                    release_unique_key(prepared.dirs, key, str(prepared.task["id"]))
        raise


def enqueue_many(
    settings: Settings,
    tasks: Iterable[Mapping[str, Any]],
    queue: str | None = None,
    *,
    catalog: Catalog | None = None,
    check: bool = True,
) -> list[str]:
    """Write many tasks with grouped syncs; all are durable when this returns.

    Every task is admitted (see admit) and validated before any is written.
    Raises: InvalidTask naming the position; DiskFault (then none of the batch is written).
    """
    catalog = Catalog.load(settings.root) if catalog is None else catalog
    batch = prepare_many(settings, tasks, queue, catalog, check, time.time())
    with reported_as("enqueue", batch[0].dirs.base if batch else settings.root):
        return write_batch(settings, batch)


def prepare_many(
    settings: Settings,
    tasks: Iterable[Mapping[str, Any]],
    queue: str | None,
    catalog: Catalog,
    check: bool,
    now: float,
) -> list[Prepared]:
    """Admit (see admit) and prepare every task, writing nothing.
    Raises: InvalidTask naming the position."""
    batch: list[Prepared] = []
    for position, task in enumerate(tasks, 1):
        try:
            batch.append(prepare(settings, admit(catalog, task, queue, check), queue, now))
        except InvalidTask as exc:  # (the kind is kept: a refusal stays a Refused)
            kind = Refused if isinstance(exc, Refused) else InvalidTask
            raise kind(f"task {position}: {exc}") from None
    return batch


def write_batch(settings: Settings, batch: list[Prepared]) -> list[str]:
    ids: list[str] = []
    items: list[tuple[bytes, Path]] = []
    created: set[QueueDirs] = set()
    written: list[Prepared] = []
    with keys_released_on_error(written):
        for prepared in batch:
            if prepared.dirs not in created:
                created.add(prepared.dirs.create())
            key = prepared.task.get("unique_key")
            holder = take_for(prepared, key) if key is not None else None
            if holder is not None:
                ids.append(holder)
                continue
            written.append(prepared)
            items.append((envelope.dump(prepared.task), prepared.dest))
            ids.append(str(prepared.task["id"]))
        tmp_dir = batch[0].dirs.tmp if batch else settings.root
        if items:
            write_many_atomic(items, tmp_dir)
    return ids


def take_for(prepared: Prepared, key: str) -> str | None:
    """Hold `key` for a prepared task (None), or return the id of the task that holds it."""
    name = prepared.dest.name.rpartition("@")[2]  # (its name in incoming/, also when delayed)
    return take_unique_key(prepared.dirs, key, str(prepared.task["id"]), name)
