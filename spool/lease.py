"""Leases: how workers on several hosts tell a running claim from an abandoned one.

Across hosts a file lock proves nothing (each host locks on its own), so in shared mode a
worker keeps its claims alive by touching them: the LeaseKeeper thread sets the mtime of every
file it holds (claims, the worker's info file) every REFRESH_SECONDS. A sweeper on any host
watches those files with a LeaseWatch: a file whose name and mtime have not changed for the
lease period, measured on the sweeper's own monotonic clock, has lost its lease. No timestamp
written by one host is ever compared with another host's clock, so clock skew does not matter;
the mtime is only compared with the mtime seen before.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)
REFRESH_SECONDS = 0.5  # well under the required "at least every second"


def touch(path: Path) -> None:
    """Set `path`'s mtime to now (a rename keeps the old one: touch a claim once it is taken)."""
    os.utime(path)


class LeaseKeeper:
    """A thread that touches the files this worker holds, every REFRESH_SECONDS."""

    def __init__(self) -> None:
        self.held: dict[Path, Callable[[], None] | None] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="spool-leases", daemon=True)
        self.thread.start()

    def hold(self, path: Path, on_lost: Callable[[], None] | None = None) -> None:
        """Touch `path` now (a rename keeps the old mtime) and keep it alive until dropped;
        `on_lost` runs if it disappears while held."""
        try:
            touch(path)
        except OSError as exc:  # the thread tries again
            log.warning("cannot start the lease of %s: %s", path.name, exc)
        with self.lock:
            self.held[path] = on_lost

    def drop(self, path: Path) -> None:
        with self.lock:
            self.held.pop(path, None)

    def run(self) -> None:
        while not self.stopping.wait(REFRESH_SECONDS):
            self.refresh()

    def refresh(self) -> None:
        with self.lock:
            held = list(self.held.items())
        for path, on_lost in held:
            try:
                touch(path)
            except FileNotFoundError:  # RACE: finished and removed, or taken by a recoverer
                if on_lost is not None:
                    try:
                        on_lost()
                    except OSError as exc:  # e.g. a full disk: the next refresh tries again
                        log.warning("cannot restore %s: %s", path.name, exc)
                    continue
                with self.lock:
                    self.held.pop(path, None)
            except OSError as exc:  # a cut-off network mount: keep trying
                log.warning("cannot renew the lease of %s: %s", path.name, exc)

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
            self.thread = None


class LeaseWatch:
    """Which watched files kept the same mtime for the lease period (this process's clock)."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self.seen: dict[str, tuple[int, float]] = {}  # key -> (mtime ns, first seen with it)

    def expired(self, key: str, mtime_ns: int, now: float) -> bool:
        """Whether `key` has shown `mtime_ns` for at least the lease period (`now`: this
        process's time.monotonic()).

        The first sighting (or a changed mtime) starts the period: a file seen only once is
        never expired, however old its mtime looks.
        """
        before = self.seen.get(key)
        if before is None or before[0] != mtime_ns:
            self.seen[key] = (mtime_ns, now)
            return False
        return now - before[1] >= self.lease_seconds

    def stat_expired(self, key: str, path: Path, now: float) -> bool:
        """`expired` for a file by its path; a file that is gone is not expired."""
        try:
            mtime_ns = os.lstat(path).st_mtime_ns
        except FileNotFoundError:
            self.seen.pop(key, None)
            return False
        return self.expired(key, mtime_ns, now)

    def keep_only(self, keys: Iterable[str]) -> None:
        """Forget the files not seen in the latest listing (gone, or renamed)."""
        present = set(keys)
        for key in [k for k in self.seen if k not in present]:
            del self.seen[key]
