"""Each attempt's output: what a handler writes to stdout, stderr and `logging` (its child
processes too), kept beside its task as <queue>/attempts/<id>/<attempt>.log (see layout).

The handler process points its fds 1 and 2 at its worker's scratch file (layout.output_scratch)
once, at start-up (capture_output), so nothing copies output while a handler runs: no thread,
no pipe to drain. The scratch is opened O_APPEND, so it can be emptied under a writer. When
the attempt ends, the last `limit` bytes (default 64 KiB, `[workers] output_bytes`) move to the
log file and the scratch is emptied (keep_tail; nothing when the attempt wrote nothing). While
an attempt runs, its worker cuts the scratch back to its tail when it grows past SLACK times
the limit (Scratch.bound), so a chatty handler cannot fill the disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from spool.envelope import JSON
from spool.fsio import write_atomic
from spool.layout import FILE_MODE, ensure_dir

OUTPUT_LIMIT_BYTES = 64 * 1024
SLACK = 4  # the scratch may grow to this many times the limit before it is cut
CUT_NOTE = b"[spool: earlier output of this attempt was not kept]\n"


@dataclass(frozen=True)
class Scratch:
    """A worker's scratch file (the running attempt's output) and what is kept of an attempt."""

    path: Path
    limit: int = OUTPUT_LIMIT_BYTES

    def keep(self, log_path: str) -> None:
        """Move what the attempt wrote to `log_path` (the worker's side: the child is gone)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        except OSError:
            return
        try:
            move_tail(fd, log_path, self.limit)
        finally:
            os.close(fd)

    def bound(self) -> None:
        """Cut the running attempt's output back to its tail when it grew too big."""
        try:
            if os.stat(self.path).st_size <= SLACK * self.limit:
                return
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        except OSError:
            return
        try:
            tail = read_tail(fd, self.limit)
            # RACE: what the handler writes between the read and the truncate is not kept
            os.ftruncate(fd, 0)
            os.write(fd, CUT_NOTE + tail)
        except OSError:
            pass
        finally:
            os.close(fd)


def read_tail(fd: int, limit: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, limit, max(0, size - limit))


def keep_tail(fd: int, dest: str, limit: int) -> None:
    """Write the last `limit` bytes of the output file `fd` to `dest` (nothing when it is
    empty) and empty it. Raises: OSError."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    tail = read_tail(fd, limit)
    if size > limit:
        tail = CUT_NOTE + tail
    log = Path(dest)
    ensure_dir(log.parent)  # (group access, whatever the handler process's umask)
    # (a follower sees the whole log file or none; the temporary name is a dot-name beside it)
    write_atomic(tail, log.parent, log, durable=False)
    os.ftruncate(fd, 0)


def move_tail(fd: int, dest: str, limit: int) -> None:
    """keep_tail, and on a failure (a full disk) empty `fd` all the same: the output is a
    help, never a reason to lose the outcome, nor to mix it into the next attempt's."""
    try:
        keep_tail(fd, dest, limit)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)


# ---- the handler process's side ----------------------------------------------------------


def capture_output(path: str) -> None:
    """Point fds 1 and 2 at the scratch file, and `logging` at stderr (unless the task code
    configured it); called once, when the handler process starts."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, FILE_MODE)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def end_output(log_path: JSON, limit: int) -> None:
    """Flush what the attempt wrote and move it beside the task (the handler process's side)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    if not isinstance(log_path, str):
        return
    move_tail(1, log_path, limit)
