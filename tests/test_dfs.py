"""`spool doctor --fs` on real distributed filesystems (tests/dfsbed.py): a GlusterFS volume of
one brick, a MooseFS master with one chunkserver, a JuiceFS volume on Redis, each served from
its own network namespace, with two FUSE clients each in theirs. The shared-mode scenarios run
on these beds too: tests/test_hosts.py."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import PROJECT_DIR, spool_command
from tests.dfsbed import DfsBed

ENGINES = ["glusterfs", "moosefs", "juicefs"]
StartBed = Callable[..., DfsBed]


def doctor(bed: DfsBed, *args: str) -> subprocess.CompletedProcess[str]:
    (bed.mount(0) / "spool").mkdir(exist_ok=True)
    return subprocess.run(
        spool_command(bed.mount(0) / "spool", "doctor", *args),
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_the_doctor_sees_the_mount_as_shared_and_finds_locks_shared(
    netbed: StartBed, engine: str
) -> None:
    """Measured, renames through two clients: to unique names one winner each; to a common
    name both succeeded in 34-77 rounds of 200 on GlusterFS, 16 on MooseFS (a warning). On
    MooseFS one client once won all 200 unique-target renames (the two did not overlap), so
    that they raced is asserted on GlusterFS only."""
    bed = netbed(engine, hosts=2)
    done = doctor(bed, "--fs", "--json", "--other-mount", str(bed.mount(1) / "spool"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    fs, probes = report["filesystem"], report["probes"]
    assert fs["fstype"] == bed.FSTYPE and fs["network"] and bed.ENGINE in fs["why"]
    assert probes["rename_race_other_mount"]["ok"]  # claims: one winner across clients
    assert probes["common_target"]["both_won"] == 0
    assert probes["other_mount"]["locks"] == "shared"
    assert report["safe"]
    common = probes["common_target_other_mount"]
    print(f"\n{bed.ENGINE}: {common['both_won']} of 200 common-target rounds had two winners")
    if engine == "glusterfs":  # 34-77 of 200 measured; MooseFS's few are not assured
        assert min(probes["rename_race_other_mount"]["wins"]) > 0  # the two clients raced
        assert common["both_won"] > 0 and "common name" in report["warnings"][0]
