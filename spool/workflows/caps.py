"""Concurrency caps: at most N tasks of a key running at once, across every worker on the root
(and every host in shared mode).

A cap of N for key K is N seat files

    <root>/.caps/<K>-<hash>/<j>          j = 0 .. N-1; content: {"task": id, "worker": id}

A worker that claimed a capped task creates the first free seat with O_EXCL (one winner, also
on GlusterFS, MooseFS and JuiceFS; nothing here renames onto a common name) and deletes it when
the attempt ends. With every seat taken, the task goes back to incoming/ unchanged (no attempt)
and the worker looks at it again a moment later.

A worker that dies holding a seat leaves its claim in processing/; the one worker that takes the
claim over (claims are recovered by a rename to a name of its own, see spool.claim) frees the
seats the dead worker held for that task (see free_seats_of), so a seat is freed within
`recover_seconds` (shared mode: the lease) and never by two recoverers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from spool.fsio import list_names, write_file
from spool.layout import ensure_dir, key_dir_name

RETRY_SECONDS = 0.25  # how soon a worker looks again at a task whose cap is full
TORN_SEAT_SECONDS = 10.0  # a seat still without its content after this lost its writer


@dataclass(frozen=True)
class Cap:
    """How many tasks of a key may run at once."""

    key: str
    limit: int


def caps_dir(root: Path) -> Path:
    return root / ".caps"


def key_dir(root: Path, key: str) -> Path:
    return caps_dir(root) / key_dir_name(key)


def take_seat(root: Path, cap: Cap, task_id: str, worker_id: str) -> Path | None:
    """Create the first free seat of `cap` for this task, or None when all are taken.
    Raises: OSError."""
    base = key_dir(root, cap.key)
    data = json.dumps({"task": task_id, "worker": worker_id}).encode()
    for seat in range(cap.limit):
        path = base / str(seat)
        try:
            write_file(path, data, durable=False)  # (a seat lost to a crash: see the docstring)
            return path
        except FileExistsError:  # RACE: another worker sits there
            continue
        except FileNotFoundError:  # the key's first seat: make its directory
            ensure_dir(base)  # (group access, whatever the umask: see layout)
            try:
                write_file(path, data, durable=False)
                return path
            except FileExistsError:
                continue
    return None


def leave_seat(seat: Path) -> None:
    """Free a seat this worker holds."""
    seat.unlink(missing_ok=True)


def free_seats_of(root: Path, task_id: str, worker_id: str, now: float) -> int:
    """Free the seats a dead worker held for a task whose claim this worker took over (and any
    seat left torn by a power loss); return how many. Raises: OSError."""
    freed = 0
    for key in list_names(caps_dir(root)):
        for seat in list_names(caps_dir(root) / key):
            path = caps_dir(root) / key / seat
            try:
                holder = json.loads(path.read_bytes())
            except ValueError:  # torn: being written by a live taker, or by one that lost power
                holder = "torn" if is_old(path, now) else None
            except OSError:
                continue  # (freed meanwhile)
            if holder == {"task": task_id, "worker": worker_id} or holder == "torn":
                path.unlink(missing_ok=True)
                freed += 1
    return freed


def is_old(path: Path, now: float) -> bool:
    try:
        return now - os.lstat(path).st_mtime > TORN_SEAT_SECONDS
    except OSError:
        return False


def seats_taken(root: Path, key: str) -> int:
    """How many seats of a key are taken now (for tests)."""
    return len(list_names(key_dir(root, key)))
