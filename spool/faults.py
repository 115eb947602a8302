"""Faults of the disk: a write refused because the filesystem is full (ENOSPC), the quota is
used up (EDQUOT) or the device fails (EIO).

They are not the user's mistake and usually pass: a producer reports one line (DiskFault), a
resident process keeps what it could not write and tries again with a growing pause (Backoff),
saying so at most once a minute (Complaint), never exiting because of them.

A crash at a chosen point is how tests kill a worker between two steps (crash_point).
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spool.errors import DiskFault

CRASH_ENV = "SPOOL_TEST_CRASH_AT"  # tests only: "<point>:<flag file>", see crash_point
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
COMPLAIN_SECONDS = 60.0


def is_disk_fault(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def describe(exc: OSError, where: Path | None = None) -> str:
    """ "No space left on device (ENOSPC) in /srv/spool/default/tmp": one line."""
    code = exc.errno or 0
    text = f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
    if exc.filename:
        where = Path(os.fsdecode(exc.filename)).parent
    return text if where is None else f"{text} in {where}"


@contextmanager
def reported_as(doing: str, where: Path | None = None) -> Iterator[None]:
    """Turn a disk fault inside into DiskFault("cannot <doing>: ... in <where>"), chained."""
    try:
        yield
    except OSError as exc:
        if not is_disk_fault(exc):
            raise
        raise DiskFault(f"cannot {doing}: {describe(exc, where)}", exc.errno) from exc


@dataclass
class Backoff:
    """Pauses between tries of something that keeps failing: `first`, doubling, up to `cap`."""

    first: float = 0.25
    cap: float = 5.0
    failures: int = 0

    def next_pause(self) -> float:
        """The pause after one more failure."""
        self.failures += 1
        return min(self.cap, self.first * 2.0 ** min(self.failures - 1, 30))

    def reset(self) -> None:
        self.failures = 0


@dataclass
class Complaint:
    """Whether to log a failure that keeps repeating: the first time, then once a minute."""

    every_seconds: float = COMPLAIN_SECONDS
    last_at: float | None = None
    repeats: int = 0  # failures not logged since the last line

    def due(self, now: float) -> bool:
        """Record one failure at `now`; True when it is to be logged."""
        if self.last_at is not None and now - self.last_at < self.every_seconds:
            self.repeats += 1
            return False
        self.last_at, self.repeats = now, 0
        return True

    def clear(self) -> bool:
        """The failures are over; True if any was logged (so the recovery is worth a line)."""
        failing = self.last_at is not None
        self.last_at, self.repeats = None, 0
        return failing


def crash_point(point: str) -> None:
    """SIGKILL this process here, once: when the environment (tests only) names this point and
    its flag file, which does not exist yet (it is created first, so the next process passes)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    name, _, flag = wanted.partition(":")
    if name != point or not flag:
        return
    try:
        fd = os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    os.fsync(fd)
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
