"""spool doctor: the mountinfo parser, and the probes run for real on tmp_path (local disk)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from spool.mounts import is_network, mount_of, parse_mountinfo
from tests.conftest import PROJECT_DIR, spool_command

MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /srv/my\040spool rw,nosuid shared:20 - fuse.sshfs me@box:/data rw,user_id=0
31 22 0:41 / /mnt/nfs rw,relatime shared:21 master:3 - nfs4 fs1:/export rw,vers=4.2
32 31 0:42 / /mnt/nfs/local rw - tmpfs tmpfs rw
"""


def doctor(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        spool_command(root, "doctor", *args),
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_mountinfo_parser_unescapes_mount_points_and_reads_the_type() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [(m.mount_point, m.fstype) for m in mounts] == [
        ("/", "ext4"),
        ("/srv/my spool", "fuse.sshfs"),
        ("/mnt/nfs", "nfs4"),
        ("/mnt/nfs/local", "tmpfs"),
    ]
    assert mounts[1].source == "me@box:/data"


def test_the_longest_mount_point_over_the_root_wins() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mount_of(Path("/srv/my spool/q"), mounts) == mounts[1]
    assert mount_of(Path("/mnt/nfs/a"), mounts) == mounts[2]
    assert mount_of(Path("/mnt/nfs/local/a"), mounts) == mounts[3]
    assert mount_of(Path("/mnt/nfsx"), mounts) == mounts[0]


def test_sshfs_and_nfs4_are_network_filesystems_and_ext4_is_not() -> None:
    assert is_network("fuse.sshfs") and is_network("nfs4")
    assert not is_network("ext4") and not is_network("tmpfs")
    assert not is_network("fuse.fuse-overlayfs")  # a container's root: this host's files only


def test_probes_on_local_disk_find_it_safe(tmp_path: Path) -> None:
    done = doctor(tmp_path, "--fs", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    probes = report["probes"]
    assert not report["filesystem"]["network"]
    assert probes["rename_race"]["ok"] and probes["rename_race"]["other_errors"] == []
    assert probes["o_excl"]["second_create_errno"] == "EEXIST"
    assert probes["no_replace"]["second_link_errno"] == "EEXIST"
    assert probes["locks"]["exclusive"]
    assert probes["inotify"]["seen"]
    assert abs(probes["clock_skew"]["skew_ms"]) < 1000
    assert probes["fsync"]["p50_ms"] > 0
    assert report["safe"]


def test_plain_output_ends_with_the_verdict(tmp_path: Path) -> None:
    done = doctor(tmp_path, "--fs")
    assert done.returncode == 0, done.stderr
    assert "verdict: single host: safe (workers on this host only)" in done.stdout


def test_the_scratch_directory_is_removed(tmp_path: Path) -> None:
    doctor(tmp_path, "--fs")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".doctor-")] == []


def test_without_fs_only_the_filesystem_type_is_reported(tmp_path: Path) -> None:
    (tmp_path / "emails").mkdir()
    done = doctor(tmp_path, "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0
    assert "probes" not in report
    assert report["queues"] == ["emails"]
    assert report["filesystem"]["fstype"]


def test_the_same_directory_as_other_mount_shares_locks_and_listings(tmp_path: Path) -> None:
    done = doctor(tmp_path, "--fs", "--json", "--other-mount", str(tmp_path))
    assert done.returncode == 0, done.stderr
    other = json.loads(done.stdout)["probes"]["other_mount"]
    assert other["locks"] == "shared"
    assert other["visible_ms"] is not None and other["visible_ms"] < 2000


def test_a_missing_other_mount_is_a_one_line_usage_error(tmp_path: Path) -> None:
    done = doctor(tmp_path, "--fs", "--other-mount", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "--other-mount" in done.stderr
