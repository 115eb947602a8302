"""Claims: how exactly one worker comes to own a task, and how a dead worker's claims return.

A worker owns a task while the task's file is in processing/ under a name ending in
`@<worker id>`; the claim is one rename out of incoming/, so of many workers racing for a
file exactly one succeeds and the others get ENOENT (silently: it is the normal case).

Whoever knows a worker is dead (see spool.workers: its liveness lock is free; in shared mode,
the claim's lease ran out, see spool.lease) may take its claims over by renaming each one to
its own name (again a rename, so two recoverers never both get the same task).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from spool.layout import QueueDirs, processing_name, split_processing

log = logging.getLogger(__name__)


@dataclass
class Claim:
    """A task file this worker owns in processing/."""

    dirs: QueueDirs
    name: str  # its name in incoming/
    worker_id: str
    claimed_at: float = field(default_factory=time.time)
    committed: bool = False  # its outcome is written; the claim waits for the sync (hidden)

    @cached_property
    def path(self) -> Path:
        entry = processing_name(self.name, self.worker_id)
        return self.dirs.processing / (f".{entry}" if self.committed else entry)

    def hide(self) -> Claim:
        """Mark the claim committed, just before its outcome is written: it no longer counts
        as processing, and recovery drops it once it sees that outcome (or, without one,
        sends the task back like any other claim). Raises FileNotFoundError when a recoverer
        took the claim (see Recorder.fence)."""
        hidden = Claim(self.dirs, self.name, self.worker_id, self.claimed_at, committed=True)
        os.rename(self.path, hidden.path)
        return hidden

    def unhide(self) -> Claim:
        """Undo hide() when the outcome could not be written after all (a full disk): the
        task counts as processing again while its outcome waits. Raises: OSError."""
        shown = Claim(self.dirs, self.name, self.worker_id, self.claimed_at)
        os.rename(self.path, shown.path)
        return shown


def claim(dirs: QueueDirs, name: str, worker_id: str) -> Claim | None:
    """Take `name` out of incoming/, or return None if another worker got it first.

    Any other error is a "maybe" (over a network the rename may have happened and its reply
    been lost): the claim is ours if our target exists. If even that cannot be told, None;
    a claim left behind that way has no lease and is recovered by the sweepers.
    """
    taken = Claim(dirs, name, worker_id)
    try:
        os.rename(dirs.incoming / name, taken.path)
    except FileNotFoundError:  # RACE: another worker renamed it after our scan
        return None
    except OSError as exc:
        try:
            os.lstat(taken.path)
        except OSError:
            log.warning("cannot claim %s: %s", name, exc)
            return None
        log.warning("claim of %s reported %s, but it is ours", name, exc)
    return taken


def release(taken: Claim) -> None:
    """Put a claimed task back in incoming/ unchanged (no attempt is counted)."""
    os.rename(taken.path, taken.dirs.incoming / taken.name)


def abandoned(
    dirs: QueueDirs, own_id: str, is_dead: Callable[[str, str], bool]
) -> Iterator[tuple[Claim, str]]:
    """Take over the claims in processing/ whose worker is dead; yield (own claim, dead id).

    `is_dead(entry, owner)` decides per processing/ entry: by the owner's lock on one host,
    by the entry's lease in shared mode.
    """
    try:
        entries = os.listdir(dirs.processing)
    except FileNotFoundError:
        return
    for entry in entries:
        committed = entry.startswith(".")
        parts = split_processing(entry[1:] if committed else entry)
        if parts is None:
            continue
        name, owner = parts
        if not is_dead(entry, owner):  # (own claims too: shared mode may lose track of one)
            continue
        taken = Claim(dirs, name, own_id, committed=committed)
        try:
            os.rename(dirs.processing / entry, taken.path)
        except FileNotFoundError:  # RACE: another recoverer took it, or its worker finished it
            continue
        log.debug("took over %s from dead worker %s", entry, owner)
        yield taken, owner
