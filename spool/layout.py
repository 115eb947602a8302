"""The spool on disk: one directory per queue, one subdirectory per state.

    <root>/<queue>/tmp/         producers write here first, then rename
    <root>/<queue>/incoming/    ready tasks: <9-priority>_<enqueued µs>_<id>.json, or any
                                *.json a program dropped (not starting with '.')
    <root>/<queue>/delayed/     <due µs>@<incoming name>: not due yet
    <root>/<queue>/processing/  <incoming name>@<worker id>: claimed by that worker (a dot in
                                front: finished, waiting for the sync that makes it durable)
    <root>/<queue>/done/        <id>.json: finished, with the result
    <root>/<queue>/failed/      <id>.json: failed for good; or a rejected file under its own
                                name with <stem>.error.json beside it; or a cancelled task,
                                with the marker .<id>.cancelled beside it (cancelled, not
                                failed: counted and retried apart, see manage.cancel)
    <root>/<queue>/attempts/<id>/  beside the task: <attempt>.log (what the handler wrote
                                during that attempt), progress.json (its last progress while
                                it runs), cancel (an operator's request to stop it); removed
                                with the task
    <root>/<queue>/.unique/     one file per held unique_key
    <root>/<queue>/.paused      present while the queue is paused
    <root>/.workers/            <worker id>.lock (locked while the worker lives) and .json

Names carry everything the hot path needs (priority, order, due time, owner), so workers sort
and promote without opening files. Directory names starting with '.' are never queues.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from spool.errors import ConfigError, InvalidQueueName

DIR_MODE = 0o770
FILE_MODE = 0o660
STATES = ("incoming", "delayed", "processing", "done", "failed")
QUEUE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
CANONICAL_RE = re.compile(r"([0-9])_([0-9]{16})_([A-Za-z0-9._-]{1,128})\.json")
ERROR_SUFFIX = ".error.json"
CANCELLED_SUFFIX = ".cancelled"
DEFAULT_QUEUE = "default"


def check_queue_name(name: str) -> str:
    """Return `name` if it is a valid queue name. Raises: InvalidQueueName."""
    if not QUEUE_RE.fullmatch(name):
        raise InvalidQueueName(f"invalid queue name {name!r}: use 1-64 of A-Z a-z 0-9 _ -")
    return name


def is_task_name(name: str) -> bool:
    """Whether a file name in incoming/ is a task (spool never looks at the others)."""
    return name.endswith(".json") and not name.startswith(".")


def canonical_name(priority: int, enqueued_us: int, task_id: str) -> str:
    """The incoming/ name of a task: sorting these names sorts the queue (fixed-width head)."""
    return f"{9 - priority}_{enqueued_us:016d}_{task_id}.json"


def cancelled_marker(task_file: str) -> str:
    """The marker beside a cancelled task's file in failed/ (a dot-name: never listed as a task)."""
    return f".{task_file.removesuffix('.json')}{CANCELLED_SUFFIX}"


def is_cancelled_marker(name: str) -> bool:
    return name.startswith(".") and name.endswith(CANCELLED_SUFFIX)


def marked_cancelled(names: list[str]) -> set[str]:
    """The task files among a failed/ listing's `names` that a cancelled marker stands beside."""
    return {
        name[1:].removesuffix(CANCELLED_SUFFIX) + ".json"
        for name in names
        if is_cancelled_marker(name)
    }


def delayed_name(due_us: int, name: str) -> str:
    return f"{due_us:016d}@{name}"


def split_delayed(entry: str) -> tuple[int, str] | None:
    """(due µs, incoming name) of a delayed/ entry, or None if it is not one of ours."""
    due, sep, name = entry.partition("@")
    if not sep or len(due) != 16 or not due.isdigit() or not is_task_name(name):
        return None
    return int(due), name


def processing_name(name: str, worker_id: str) -> str:
    return f"{name}@{worker_id}"


def split_processing(entry: str) -> tuple[str, str] | None:
    """(incoming name, worker id) of a processing/ entry, or None."""
    name, sep, worker_id = entry.rpartition("@")
    if not sep or not worker_id or not name:
        return None
    return name, worker_id


def ensure_dir(path: Path) -> None:
    """Create `path` (and parents) with group access, whatever the umask."""
    if path.is_dir():
        return
    if not path.parent.is_dir():
        ensure_dir(path.parent)
    try:
        os.mkdir(path, DIR_MODE)
        os.chmod(path, DIR_MODE)
    except FileExistsError:  # RACE: another process made it first
        pass


def check_root(root: Path) -> None:
    """Check that `root` can be a spool root for this user: a directory it can read, or a path
    that can still be made one (created on first use).

    Raises: ConfigError when a file stands where a directory must be (the root itself, or a
    directory above it); PermissionError when the root exists but cannot be read, or a
    directory above it cannot be looked into.
    """
    path = root
    while True:
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):  # not made yet, or a file above it
            if path.parent == path:
                return
            path = path.parent
            continue
        break
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"root {root}: {path} is not a directory")
    if path == root and not os.access(root, os.R_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(root))


@dataclass(frozen=True)
class QueueDirs:
    """A queue's state directories under the root."""

    root: Path
    name: str

    # The paths are computed once per QueueDirs (the worker's hot path joins them per task).
    @cached_property
    def base(self) -> Path:
        return self.root / self.name

    @cached_property
    def tmp(self) -> Path:
        return self.base / "tmp"

    @cached_property
    def incoming(self) -> Path:
        return self.base / "incoming"

    @cached_property
    def delayed(self) -> Path:
        return self.base / "delayed"

    @cached_property
    def processing(self) -> Path:
        return self.base / "processing"

    @cached_property
    def done(self) -> Path:
        return self.base / "done"

    @cached_property
    def failed(self) -> Path:
        return self.base / "failed"

    @cached_property
    def unique(self) -> Path:
        return self.base / ".unique"

    @cached_property
    def pause_marker(self) -> Path:
        return self.base / ".paused"

    @cached_property
    def attempts(self) -> Path:
        return self.base / "attempts"

    def beside(self, task_id: str) -> Path:
        """The directory beside a task: its attempts' output, its progress, a cancel request."""
        return self.base / "attempts" / task_id

    def is_paused(self) -> bool:
        """Whether `spool pause` holds this queue (workers claim nothing from it)."""
        return os.path.exists(self.pause_marker)

    def state(self, state: str) -> Path:
        return self.base / state

    def create(self) -> QueueDirs:
        """Make every state directory (first use); return self."""
        for sub in ("tmp", *STATES, ".unique"):
            ensure_dir(self.base / sub)
        return self


@lru_cache(maxsize=256)
def queue_dirs(root: Path, name: str) -> QueueDirs:
    """The QueueDirs of a checked queue name (one per process and queue: its paths are joined
    once, not per enqueue). Raises: InvalidQueueName."""
    return QueueDirs(root, check_queue_name(name))


def existing_queues(root: Path) -> list[str]:
    """Names of the queues present under the root, sorted."""
    try:
        entries = os.scandir(root)
    except FileNotFoundError:
        return []
    with entries:
        return sorted(e.name for e in entries if QUEUE_RE.fullmatch(e.name) and e.is_dir())


def key_dir_name(key: str) -> str:
    """A directory name for any key (a rate's or a cap's): its readable part and a hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:60]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def workers_dir(root: Path) -> Path:
    return root / ".workers"


def output_scratch(root: Path, worker_id: str) -> Path:
    """Where a worker's handler process writes the running attempt's output (fds 1 and 2);
    moved beside the task as <attempt>.log when the attempt ends."""
    return root / ".workers" / f"{worker_id}.out"  # (see workers.OUTPUT_SUFFIX)


ATTEMPT_LOG_RE = re.compile(r"([0-9]{1,9})\.log")
PROGRESS_FILE = "progress.json"
CANCEL_FILE = "cancel"
