"""Which filesystems count as shared: real-looking /proc/self/mountinfo lines of distributed,
network and FUSE filesystems, read by the same functions the worker and the doctor use.

The lines follow what the kernel prints (fields up to the " - " separator, then the type, the
source with `#` and spaces escaped as octal, the super options); the MooseFS, GlusterFS and
JuiceFS ones are as their clients mount (issue 17), the others as Debian's packages do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spool.mounts import filesystem_in, is_network

ROOT_LINE = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
NFS_LINE = "23 22 0:50 / /srv/nfs rw,relatime shared:2 - nfs4 fs1:/export rw,vers=4.2\n"


def fs_at(path: str, line: str) -> dict[str, object]:
    """What the worker would decide for `path` with this line mounted over /."""
    return filesystem_in(Path(path), ROOT_LINE + NFS_LINE + line)


SHARED = {
    "moosefs": "40 22 0:41 / /mnt/mfs rw,relatime shared:20 - fuse mfs\\043192.168.1.10:9421 "
    "rw,user_id=0,group_id=0,allow_other",
    "glusterfs": "41 22 0:42 / /mnt/gv0 rw,relatime shared:21 - fuse.glusterfs gfs1:/gv0 "
    "rw,user_id=0,group_id=0,default_permissions,allow_other,max_read=131072",
    "juicefs": "42 22 0:43 / /mnt/jfs rw,relatime shared:22 - fuse.juicefs JuiceFS:myjfs "
    "rw,user_id=0,group_id=0,default_permissions,allow_other",
    "juicefs-bare": "43 22 0:44 / /mnt/jfs rw,relatime shared:23 - fuse JuiceFS:myjfs "
    "rw,user_id=0,group_id=0",
    "sshfs": "44 22 0:45 / /mnt/ssh rw,nosuid,nodev,relatime shared:24 - fuse.sshfs "
    "me@box:/data rw,user_id=0,group_id=0",
    "unknown-subtype": "45 22 0:46 / /mnt/x rw,nosuid,nodev shared:25 - fuse.mystery "
    "mystery rw,user_id=0,group_id=0",
    "unknown-bare": "46 22 0:47 / /mnt/x rw,nosuid,nodev shared:26 - fuse whatever "
    "rw,user_id=0,group_id=0",
    "bindfs-of-nfs": "47 22 0:48 / /mnt/b rw,nosuid,nodev shared:27 - fuse.bindfs "
    "/srv/nfs/spool rw,user_id=0,group_id=0",
    "fuseblk-not-a-device": "48 22 0:49 / /mnt/x rw shared:28 - fuseblk somehost:/vol rw",
    "ocfs2": "49 22 8:17 / /mnt/x rw,relatime shared:29 - ocfs2 /dev/sdb1 rw,heartbeat=local",
}

LOCAL = {
    "fuse-overlayfs": "50 22 0:51 / /mnt/x rw,nodev,relatime shared:30 - fuse.fuse-overlayfs "
    "fuse-overlayfs rw,user_id=0,group_id=0,default_permissions,allow_other",
    "lxcfs": "51 22 0:52 / /mnt/x rw,nosuid,nodev,relatime shared:31 - fuse.lxcfs lxcfs "
    "rw,user_id=0,group_id=0,allow_other",
    "lxcfs-bare": "52 22 0:53 / /mnt/x rw,nosuid,nodev shared:32 - fuse lxcfs rw,user_id=0",
    "squashfuse": "53 22 0:54 / /mnt/x ro,nosuid,nodev shared:33 - fuse.squashfuse "
    "/var/lib/images/app.squashfs ro,user_id=0,group_id=0",
    "bindfs": "54 22 0:55 / /mnt/x rw,nosuid,nodev shared:34 - fuse.bindfs /home/me/spool "
    "rw,user_id=0,group_id=0",
    "fuseblk": "55 22 8:33 / /mnt/x rw,relatime shared:35 - fuseblk /dev/sdc1 "
    "rw,user_id=0,group_id=0,allow_other,blksize=4096",
    "tmpfs": "56 22 0:56 / /mnt/x rw,nosuid,nodev shared:36 - tmpfs tmpfs rw,size=1024k",
}


@pytest.mark.parametrize("line", SHARED.values(), ids=SHARED.keys())
def test_a_root_on_a_distributed_or_unproven_fuse_filesystem_counts_as_shared(line: str) -> None:
    point = line.split()[4]
    fs = fs_at(f"{point}/spool", line)
    assert fs["mount_point"] == point
    assert fs["network"], fs["why"]


@pytest.mark.parametrize("line", LOCAL.values(), ids=LOCAL.keys())
def test_a_root_on_a_fuse_filesystem_known_to_be_local_counts_as_local(line: str) -> None:
    fs = fs_at("/mnt/x/spool", line)
    assert fs["mount_point"] == "/mnt/x"
    assert not fs["network"], fs["why"]


def test_a_moosefs_mount_is_bare_fuse_with_its_engine_in_the_source() -> None:
    """The defect of issue 17: `fuse` was taken for local, so shared mode stayed off."""
    fs = fs_at("/mnt/mfs/spool", SHARED["moosefs"])
    assert fs["fstype"] == "fuse"
    assert fs["source"] == "mfs#192.168.1.10:9421"  # mountinfo escapes '#' as \043
    assert fs["network"]
    assert "MooseFS" in str(fs["why"])


def test_the_reason_names_glusterfs_and_juicefs() -> None:
    assert "GlusterFS" in str(fs_at("/mnt/gv0", SHARED["glusterfs"])["why"])
    assert "JuiceFS" in str(fs_at("/mnt/jfs", SHARED["juicefs-bare"])["why"])


def test_a_bindfs_mount_is_as_shared_as_the_directory_it_mirrors() -> None:
    assert fs_at("/mnt/b/q", SHARED["bindfs-of-nfs"])["network"]
    assert "nfs4" in str(fs_at("/mnt/b/q", SHARED["bindfs-of-nfs"])["why"])
    assert not fs_at("/mnt/x/q", LOCAL["bindfs"])["network"]


def test_a_path_beside_a_fuse_mount_stays_on_the_local_disk() -> None:
    fs = fs_at("/mnt/mfs2/spool", SHARED["moosefs"])
    assert fs["mount_point"] == "/" and not fs["network"]


def test_network_types_by_name() -> None:
    assert is_network("fuse") and is_network("fuse.glusterfs") and is_network("nfs4")
    assert is_network("fuse", "mfs#m:9421") and is_network("fuse.x", "JuiceFS:j")
    assert not is_network("ext4") and not is_network("tmpfs") and not is_network("overlay")
    assert not is_network("fuse.lxcfs") and not is_network("fuseblk", "/dev/sdb1")
