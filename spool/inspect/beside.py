"""What is kept beside a task (see layout: <queue>/attempts/<id>/): each attempt's output, and
the running attempt's progress; read for `spool logs`, `spool show`, `ls` and the dashboard.

While an attempt runs, its output is in its worker's scratch file (see execute); when the
attempt ends it moves to <attempt>.log beside the task. A follower reads the scratch and,
once the log file is there, the rest of the log file from where it was.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spool.envelope import JSON, TaskDict
from spool.errors import SpoolError, TaskNotFound
from spool.fsio import UnreadableFile, read_regular
from spool.layout import (
    ATTEMPT_LOG_RE,
    PROGRESS_FILE,
    QueueDirs,
    output_scratch,
    split_processing,
)
from spool.lookup import Found, locate, read_found

FOLLOW_POLL_SECONDS = 0.2
PROGRESS_BYTES = 64 * 1024  # a progress record is far smaller (see context.MESSAGE_MAX)


class NoSuchAttempt(SpoolError):
    """The task has no output kept for the attempt asked for."""


@dataclass(frozen=True)
class Output:
    """Where one attempt's output is: its log file, or (running) its worker's scratch too."""

    task_id: str
    attempt: int
    log: Path
    scratch: Path | None  # while the attempt runs
    found: Found


def attempt_logs(dirs: QueueDirs, task_id: str) -> list[int]:
    """The attempts of the task whose output is kept, in order."""
    try:
        names = os.listdir(dirs.beside(task_id))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(m.group(1)) for n in names if (m := ATTEMPT_LOG_RE.fullmatch(n)))


def running_attempt(found: Found) -> tuple[int, str] | None:
    """(attempt, worker id) of a task in processing/, or None."""
    if found.state != "processing":
        return None
    parts = split_processing(found.path.name.removeprefix("."))
    task = read_found(found)
    if parts is None or "unreadable" in task:
        return None
    return int(task.get("attempts", 0)) + 1, parts[1]


def output_of(root: Path, task_id: str, attempt: int | None = None) -> Output:
    """Where the output of `attempt` (default: the last one, running or not) is.

    Raises: TaskNotFound, NoSuchAttempt.
    """
    found = locate(root, task_id)
    if found is None:
        raise TaskNotFound(task_id)
    dirs = QueueDirs(root, found.queue)
    running = running_attempt(found)
    kept = attempt_logs(dirs, task_id)
    if attempt is None:
        attempt = running[0] if running else (kept[-1] if kept else None)
    if attempt is None:
        raise NoSuchAttempt(f"task {task_id} has no output kept (it has not written any)")
    log = dirs.beside(task_id) / f"{attempt}.log"
    if running is not None and running[0] == attempt:
        return Output(task_id, attempt, log, output_scratch(root, running[1]), found)
    if attempt not in kept:
        have = ", ".join(map(str, kept)) or "none"
        raise NoSuchAttempt(
            f"task {task_id} has no output kept for attempt {attempt} (kept: {have})"
        )
    return Output(task_id, attempt, log, None, found)


def read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


def still_running(root: Path, output: Output) -> bool:
    found = locate(root, output.task_id, [output.found.queue])
    if found is None:
        return False
    running = running_attempt(found)
    return running is not None and running[0] == output.attempt


def follow(
    root: Path,
    output: Output,
    write: Callable[[bytes], None],
    poll_seconds: float = FOLLOW_POLL_SECONDS,
) -> None:
    """Write the attempt's output as it grows until the attempt ends (then the rest of it)."""
    offset = 0
    # RACE: an attempt that ends right after the look at its log file may leave the scratch to
    # the worker's next attempt: at worst a few bytes of it are shown before the log takes over
    while output.scratch is not None and not output.log.exists():
        data = read_from(output.scratch, offset)
        if data:
            write(data)
            offset += len(data)
        elif not still_running(root, output):
            break
        else:
            time.sleep(poll_seconds)
    write(read_from(output.log, offset))


def current_output(output: Output) -> bytes:
    """The attempt's output as it is now (the scratch's while it runs)."""
    if output.scratch is not None and not output.log.exists():
        return read_from(output.scratch, 0)
    return read_from(output.log, 0)


def progress_of(dirs: QueueDirs, task: TaskDict) -> JSON:
    """The running task's last written progress (see spool.context), else the file's own."""
    try:
        data, _ = read_regular(dirs.beside(str(task.get("id"))) / PROGRESS_FILE, PROGRESS_BYTES)
        value = json.loads(data)
    except (OSError, UnreadableFile, ValueError):  # (a FIFO there must not hang a reader)
        return task.get("progress")
    return value if isinstance(value, dict) else task.get("progress")


def describe_progress(progress: JSON) -> str:
    """A progress record in words: "3/10 (30%) three done", or "" for none."""
    if not isinstance(progress, dict):
        return ""
    done, total = progress.get("done"), progress.get("total")
    text = f"{done:g}" if isinstance(done, int | float) else "?"
    if isinstance(total, int | float) and total:
        text += f"/{total:g}"
        if isinstance(done, int | float):
            text += f" ({100 * done / total:.0f}%)"
    message = progress.get("message")
    return f"{text} {message}" if message else text
