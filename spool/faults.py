"""Faults of the disk: a write refused because the filesystem is full (ENOSPC), the quota is
used up (EDQUOT) or the device fails (EIO).

They are not the user's mistake and usually pass: a producer reports one line (DiskFault), a
resident process keeps what it could not write and tries again with a growing pause (Backoff),
saying so at most once a minute (Complaint), never exiting because of them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spool.errors import DiskFault

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
