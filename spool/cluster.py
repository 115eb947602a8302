"""Shared mode: whether this spool is used by workers on several hosts, and what changes then.

On one host, workers learn of new tasks from inotify and of dead workers from file locks. On a
network filesystem neither crosses hosts, so in shared mode:

- workers list incoming/ every `poll_interval` (names only) besides the local events;
- a claim is kept alive by a lease (see spool.lease) instead of a lock, and any host recovers
  a claim whose lease ran out, by renaming it to its own name first;
- a worker fences its outcome: it renames its claim before writing the outcome, and drops the
  outcome when that rename finds the claim gone (a recoverer took it);
- a worker's info file is alive while present: sweepers delete it once its lease runs out.

Shared mode is on with `[cluster] shared = true`, off with `shared = false`, and otherwise
("auto", the default) on when the root's filesystem may be shared with other hosts (network and
cluster types, and every FUSE mount not proven local: see spool.mounts), with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

from spool.config import Settings
from spool.mounts import filesystem_of

log = logging.getLogger(__name__)


def is_shared(settings: Settings, warn: bool = True) -> bool:
    """Whether to run in shared mode (the config decides; else the root's mount type)."""
    if settings.shared is not None:
        return settings.shared
    fs = filesystem_of(Path(settings.root))
    if fs["network"] and warn:
        log.warning(
            "the spool root is on %s (%s; %s), which other hosts may mount: running in shared "
            "mode; set [cluster] shared = true (or false) to choose and silence this",
            fs["fstype"],
            fs["mount_point"],
            fs["why"],
        )
    return bool(fs["network"])
