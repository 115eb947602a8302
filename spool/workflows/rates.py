"""Rate limits: at most N starts per period for a key, across every worker on the root (and
every host in shared mode), with no counter and no lock.

A rate of N per P seconds cuts time into slots of P/N seconds; slot k of key K is the file

    <root>/.rates/<K>/<k // GROUP>/<k>        (content: the id of the task started in it)

created with O_EXCL by the worker that starts a task in it, so two workers (or hosts) never
both get one slot (issue 17: O_EXCL has one winner on GlusterFS, MooseFS, JuiceFS; a rename onto
a common name does not). A worker about to start a limited task takes the first free slot from
now up to `horizon` seconds ahead: a slot that has begun starts the task at once, a later one
after an in-memory wait (no spinning: the worker sleeps until then, and a stop wakes it). With
no free slot in the horizon the task goes back to incoming/ unchanged and the worker leaves it
alone until the horizon reaches the next slot. Either way the wait is no attempt.

Starts are spaced evenly (no bursts), so over any window of T seconds at most T*N/P + 1 start.
A slot taken by a worker that then died is a start missed, never an extra one. The creator of a
group's directory deletes the groups before the previous one. On several hosts the slots follow
each host's clock: keep them in step (NTP), or a fast clock takes the next slots first.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from spool.envelope import Rate
from spool.fsio import list_names, write_file
from spool.layout import ensure_dir, key_dir_name

GROUP = 1000  # slots per directory
HORIZON_SECONDS = 2.0  # how far ahead a worker reserves a slot (and waits in memory)


@dataclass(frozen=True)
class Limit:
    """The rate a task is held to, and the key it shares the rate under."""

    key: str
    rate: Rate


@dataclass(frozen=True)
class Reservation:
    """A slot taken (`start_at`: when the task may start), or none in the horizon (`start_at`
    None; look again at `retry_at`)."""

    start_at: float | None
    retry_at: float


def key_dir(root: Path, key: str) -> Path:
    """The directory of a key's slots (any key is a safe name, see layout.key_dir_name)."""
    return root / ".rates" / key_dir_name(key)


def reserve(
    root: Path, limit: Limit, task_id: str, now: float, horizon: float = HORIZON_SECONDS
) -> Reservation:
    """Take the first free slot of `limit` from `now` to `now + horizon`. Raises: OSError."""
    interval = limit.rate.interval
    first = math.floor(now / interval)
    last = max(first, math.floor((now + horizon) / interval))
    base = key_dir(root, limit.key)
    for k in range(first, last + 1):
        if take_slot(base, k, task_id):
            return Reservation(max(now, k * interval), now)
    return Reservation(None, max(now, (last + 1) * interval - horizon))


def take_slot(base: Path, k: int, task_id: str) -> bool:
    """Create slot k (O_EXCL); False if another worker has it. Raises: OSError."""
    group = base / str(k // GROUP)
    path = group / str(k)
    try:
        write_file(path, task_id.encode(), durable=False)  # (a lost slot is a start missed)
        return True
    except FileExistsError:  # RACE: another worker's start is in this slot
        return False
    except FileNotFoundError:  # the group's first slot: make its directory
        pass
    ensure_dir(group)  # (group access, whatever the umask: see layout)
    drop_old_groups(base, k // GROUP)
    try:
        write_file(path, task_id.encode(), durable=False)
        return True
    except FileExistsError:
        return False


def drop_old_groups(base: Path, current: int) -> None:
    """Delete the slot groups before the previous one (nobody reserves in the past)."""
    for name in list_names(base):
        if name.isdigit() and int(name) < current - 1:
            shutil.rmtree(base / name, ignore_errors=True)


def starts_in(root: Path, key: str, rate: Rate, since: float, until: float) -> int:
    """How many slots of the key were taken between two instants (for tests)."""
    interval = rate.interval
    base = key_dir(root, key)
    first, last = math.floor(since / interval), math.floor(until / interval)
    taken = 0
    for group in range(first // GROUP, last // GROUP + 1):
        for name in list_names(base / str(group)):
            if name.isdigit() and first <= int(name) <= last:
                taken += 1
    return taken
