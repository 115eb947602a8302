"""Which filesystem a path lives on, from /proc/self/mountinfo, and whether it can be shared.

The mount whose mount point is the longest prefix of the resolved path wins (a nested tmpfs
beats /); mount points and sources are unescaped (`\\040` is a space, `\\043` a `#`).

A mistake in one direction costs a little speed (shared mode on one host: polling, leases); in
the other it runs tasks twice (host-local locks and inotify on a root that other hosts use).
So the rules only ever call a filesystem local on proof:

- network and cluster types (nfs4, cifs, ceph, ocfs2, ...) are shared;
- a FUSE source naming a distributed engine is shared whatever the type says: MooseFS and
  LizardFS mount as bare `fuse` with the source `mfs#host:port`, JuiceFS as `JuiceFS:<name>`;
- every other FUSE mount (`fuse`, `fuse.<subtype>`) is shared unless its subtype is one known
  to show only this host's files (LOCAL_FUSE); one of those whose source is a directory (bindfs)
  is as shared as the filesystem of that directory;
- `fuseblk` (ntfs-3g, exfat on a block device) is local when its source is a device in /dev;
- anything else (ext4, xfs, btrfs, tmpfs, overlay, ...) is local.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spool.envelope import JSON

NETWORK_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "9p",
        "virtiofs",
        "lustre",
        "ocfs2",
        "gfs2",
        "beegfs",
        "gpfs",
        "afs",
        "orangefs",
    }
)

# FUSE subtypes that only ever show this host's own files (container roots and the like)
LOCAL_FUSE = frozenset({"fuse-overlayfs", "lxcfs", "squashfuse", "bindfs"})

# what a FUSE subtype or source prefix means, for the doctor's and the worker's messages
ENGINES = {
    "mfs": "MooseFS/LizardFS",
    "glusterfs": "GlusterFS",
    "juicefs": "JuiceFS",
    "sshfs": "sshfs",
    "ceph": "CephFS",
    "ceph-fuse": "CephFS",
    "s3fs": "s3fs",
    "rclone": "rclone",
    "gcsfuse": "gcsfuse",
}
SOURCE_PREFIXES = {"JuiceFS:": "juicefs", "mfs#": "mfs", "sshfs#": "sshfs"}
MAX_HOPS = 8  # a bindfs of a bindfs of ...: give up (shared) rather than loop


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo: where, what type, from which source."""

    mount_point: str
    fstype: str
    source: str


@dataclass(frozen=True)
class Sharing:
    """Whether other hosts may mount the same filesystem, and the rule that said so."""

    shared: bool
    why: str


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


def fuse_subtype(fstype: str, source: str) -> str | None:
    """The FUSE filesystem's own name ("" if it gives none), or None if not FUSE at all.

    `fuse.<subtype>` names it; a bare `fuse` mount may name it in its source (`mfs#host:port`,
    libfuse's fallback when the kernel lacks subtypes) or by the source alone (`lxcfs`)."""
    if fstype.startswith("fuse."):
        return fstype.removeprefix("fuse.")
    if fstype != "fuse":
        return None
    if "#" in source:
        return source.partition("#")[0]
    return source if source in LOCAL_FUSE else ""


def engine_of(fstype: str, source: str) -> str | None:
    """The distributed engine a mount's source or FUSE subtype names, if any."""
    for prefix, engine in SOURCE_PREFIXES.items():
        if source.startswith(prefix):
            return engine
    subtype = fuse_subtype(fstype, source)
    return subtype if subtype in ENGINES else None


def sharing_of(mount: Mount, mounts: Sequence[Mount] = (), hops: int = 0) -> Sharing:
    """Whether `mount` may be shared with other hosts (see the module docstring)."""
    fstype, source = mount.fstype, mount.source
    if fstype in NETWORK_TYPES:
        return Sharing(True, f"{fstype} is a network filesystem")
    engine = engine_of(fstype, source)
    if engine is not None:
        return Sharing(True, f"FUSE mount of {ENGINES[engine]} (source {source})")
    if fstype == "fuseblk":
        if source.startswith("/dev/"):
            return Sharing(False, f"FUSE on this host's block device {source}")
        return Sharing(True, f"fuseblk not on a device in /dev (source {source})")
    subtype = fuse_subtype(fstype, source)
    if subtype is None:
        return Sharing(False, f"{fstype} is a local filesystem")
    if subtype not in LOCAL_FUSE:
        shown = f"FUSE subtype {subtype}" if subtype else "bare FUSE mount"
        return Sharing(True, f"{shown} (source {source}), not known to be local")
    return mirrored_sharing(mount, mounts, hops)


def mirrored_sharing(mount: Mount, mounts: Sequence[Mount], hops: int) -> Sharing:
    """A local FUSE subtype: local, unless its source is a directory on a shared filesystem."""
    local = Sharing(False, f"{mount.fstype} shows only this host's files")
    if not mount.source.startswith("/"):
        return local
    if hops >= MAX_HOPS:
        return Sharing(True, f"{mount.fstype} mirrors a chain of mounts too long to follow")
    under = mount_of(Path(mount.source), [m for m in mounts if m != mount])
    if under is None:
        return local
    beneath = sharing_of(under, mounts, hops + 1)
    if not beneath.shared:
        return local
    return Sharing(True, f"{mount.fstype} mirrors {mount.source}: {beneath.why}")


def is_network(fstype: str, source: str = "") -> bool:
    """Whether other hosts can mount this filesystem too (shared-capable)."""
    return sharing_of(Mount("/", fstype, source)).shared


def filesystem_of(root: Path) -> dict[str, JSON]:
    """The root's filesystem type and mount point, from /proc/self/mountinfo."""
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return filesystem_in(root.resolve(), text)


def filesystem_in(path: Path, mountinfo: str) -> dict[str, JSON]:
    """The filesystem holding `path` (absolute, resolved) in a mountinfo text: type, mount
    point, source, whether other hosts may share it (`network`) and why."""
    mounts = parse_mountinfo(mountinfo)
    mount = mount_of(path, mounts)
    if mount is None:
        return {
            "fstype": "unknown",
            "mount_point": None,
            "source": None,
            "network": False,
            "why": "no mount found in /proc/self/mountinfo",
        }
    sharing = sharing_of(mount, mounts)
    return {
        "fstype": mount.fstype,
        "mount_point": mount.mount_point,
        "source": mount.source,
        "network": sharing.shared,
        "why": sharing.why,
    }
