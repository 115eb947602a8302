"""Shared mode switches on by itself on a real FUSE mount that other hosts share, whatever it
calls itself: here the two hosts' sshfs mounts of tests/hostbed.py are made to show in
mountinfo exactly as MooseFS's client does (bare type `fuse`, source `mfs#host:port`), the
mount that issue 17 found taken for a local disk. And the doctor's common-target race through
two mounts.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import PROJECT_DIR, names, spool_command, wait_until
from tests.hostbed import HostBed
from tests.test_hosts import done_tasks, runs_of, server_app, write_config

MOOSEFS_SOURCE = "mfs#10.0.0.9:9421"


def doctor(root: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        spool_command(root, "doctor", *args, config=config),
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_bed_shows_its_mounts_as_moosefs_does(hostbed: Callable[..., HostBed]) -> None:
    bed = hostbed(hosts=1, fsname=MOOSEFS_SOURCE)
    point = str(bed.mount(0))
    lines = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    ours = [f for f in lines if f[4] == point and f[f.index("-") + 1] != "tmpfs"]
    assert [(f[f.index("-") + 1], f[f.index("-") + 2]) for f in ours] == [
        ("fuse", "mfs\\04310.0.0.9:9421")
    ]


def test_workers_on_a_moosefs_looking_mount_switch_to_shared_mode_by_themselves(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    bed = hostbed(hosts=2, fsname=MOOSEFS_SOURCE)
    config = write_config(tmp_path)  # no [cluster] section: the mount type decides
    record = tmp_path / "runs.txt"
    ids = server_app(bed, config).enqueue_many(
        [{"task": "record", "args": [str(record), f"t{i}"]} for i in range(300)]
    )
    logs = [tmp_path / f"worker{host}.log" for host in (0, 1)]
    started = time.monotonic()
    workers = []
    for host, log_path in enumerate(logs):
        with open(log_path, "wb") as log:
            command = spool_command(bed.mount(host) / "spool", "worker", "--burst", config=config)
            workers.append(bed.spawn(host, command, cwd=PROJECT_DIR, stderr=log))
    wait_until(lambda: all(w.poll() is not None for w in workers), 120, 0.1)
    print(f"\nsshfs shown as MooseFS, 2 hosts: 300 tasks in {time.monotonic() - started:.1f} s")
    assert [w.returncode for w in workers] == [0, 0]
    for log_path in logs:
        text = log_path.read_text()
        assert "running in shared mode" in text and "MooseFS" in text, text
    assert len(names(bed.export / "spool" / "default" / "done")) == 300
    done = done_tasks(bed)
    assert sorted(done) == sorted(ids)
    assert set(runs_of(record).values()) == {1}


def test_doctor_on_a_moosefs_looking_mount_says_several_hosts_and_where_that_is_tested(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    bed = hostbed(hosts=1, fsname=MOOSEFS_SOURCE)
    (bed.export / "spool").mkdir()
    result = doctor(bed.mount(0) / "spool", write_config(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["filesystem"]["fstype"] == "fuse"
    assert report["filesystem"]["network"]
    assert "MooseFS" in report["filesystem"]["why"]
    assert report["verdict"].startswith("several hosts: safe in shared mode")
    assert "sshfs" in report["tested_shared_on"]


def test_renames_to_a_common_name_through_two_sshfs_mounts_have_one_winner(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    bed = hostbed(hosts=2)
    (bed.export / "spool").mkdir()
    result = doctor(
        bed.mount(0) / "spool",
        write_config(tmp_path),
        *("--fs", "--json", "--other-mount", str(bed.mount(1) / "spool")),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    race = report["probes"]["common_target_other_mount"]
    print(f"\nsshfs, two mounts: {race['summary']}")
    assert race["both_won"] == 0 and race["other_errors"] == []
    assert sum(race["wins"]) == race["rounds"] == 200
    assert min(race["wins"]) > 0  # both mounts won rounds: they raced
    assert report["warnings"] == []
