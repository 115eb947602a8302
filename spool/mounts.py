"""Which filesystem a path lives on, from /proc/self/mountinfo, and whether it can be shared.

The mount whose mount point is the longest prefix of the resolved path wins (a nested tmpfs
beats /); mount points are unescaped (`\\040` is a space). Network and FUSE filesystems count
as shared-capable (other hosts may mount them too), except FUSE types known to be local.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from spool.envelope import JSON

NETWORK_TYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "virtiofs", "lustre"}
)

# FUSE filesystems that only ever show this host's own files (container roots and the like)
LOCAL_FUSE = frozenset({"fuse.fuse-overlayfs", "fuse.lxcfs", "fuse.squashfuse", "fuse.bindfs"})


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo: where, what type, from which source."""

    mount_point: str
    fstype: str
    source: str


def unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (`\\040` is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a mountinfo text, in order (a later mount hides an earlier one)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        if len(fields) < dash + 3:
            continue
        mounts.append(Mount(unescape(fields[4]), fields[dash + 1], unescape(fields[dash + 2])))
    return mounts


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount holding `path` (absolute, resolved): the longest mount point over it."""
    best: Mount | None = None
    for mount in mounts:
        point = Path(mount.mount_point)
        if (path == point or point in path.parents) and (
            best is None or len(mount.mount_point) >= len(best.mount_point)
        ):
            best = mount
    return best


def is_network(fstype: str) -> bool:
    """Whether other hosts can mount this filesystem type too (shared-capable)."""
    return fstype in NETWORK_TYPES or (fstype.startswith("fuse.") and fstype not in LOCAL_FUSE)


def filesystem_of(root: Path) -> dict[str, JSON]:
    """The root's filesystem type and mount point, from /proc/self/mountinfo."""
    resolved = root.resolve()
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    mount = mount_of(resolved, parse_mountinfo(text))
    if mount is None:
        return {"fstype": "unknown", "mount_point": None, "source": None, "network": False}
    return {
        "fstype": mount.fstype,
        "mount_point": mount.mount_point,
        "source": mount.source,
        "network": is_network(mount.fstype),
    }
