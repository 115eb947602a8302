"""spool doctor: the mountinfo parser, and the probes run for real on tmp_path (local disk)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from spool.deploy.doctor import TESTED_SHARED, render, verdict
from spool.deploy.races import COMMON_TARGET_WARNING
from spool.envelope import JSON
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


def test_renames_of_one_file_to_a_common_name_have_one_winner_on_local_disk(
    tmp_path: Path,
) -> None:
    done = doctor(tmp_path, "--fs", "--json", "--other-mount", str(tmp_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for name in ("common_target", "common_target_other_mount"):
        race = report["probes"][name]
        assert race["both_won"] == 0 and race["other_errors"] == [], race
        assert sum(race["wins"]) == race["rounds"] == 200
        assert min(race["wins"]) > 0, race  # both processes won rounds: they raced
        assert "warning" not in race
    assert report["probes"]["rename_race_other_mount"]["ok"]
    assert report["warnings"] == []
    assert "tested_shared_on" not in report  # a local disk: shared mode is not the question


def test_a_probe_warning_is_shown_without_making_the_verdict_unsafe() -> None:
    fs: dict[str, JSON] = {
        "fstype": "fuse.glusterfs",
        "mount_point": "/mnt/gv0",
        "source": "gfs1:/gv0",
        "network": True,
        "why": "FUSE mount of GlusterFS (source gfs1:/gv0)",
    }
    race: dict[str, JSON] = {
        "ok": True,
        "summary": "both renames to a common name succeeded in 63 of 200 rounds",
        "warning": COMMON_TARGET_WARNING,
    }
    safe, line = verdict(fs, {"common_target": race})
    assert safe and line.startswith("several hosts: safe in shared mode")
    report: dict[str, JSON] = {
        "root": "/mnt/gv0/spool",
        "config": None,
        "queues": [],
        "filesystem": fs,
        "verdict": line,
        "safe": safe,
        "tested_shared_on": TESTED_SHARED,
        "probes": {"common_target": race},
        "warnings": [COMMON_TARGET_WARNING],
    }
    text = render(report)
    assert "  WARN common_target: both renames to a common name succeeded in 63" in text
    assert f"warning: {COMMON_TARGET_WARNING}" in text
    assert f"shared mode is tested on: {TESTED_SHARED}" in text
    assert text.splitlines()[-1] == f"verdict: {line}"
