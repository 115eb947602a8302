"""The doctor's probes that need a second process: rename races between two processes (or a
process on each of two mounts), and the child roles every such probe runs.

A child is this module run as `python -m spool.deploy.races ROLE ...` (roles: race, lock,
create), printing one JSON line on stdout, bounded by a timeout. The common-target race (both
rename the same file to the same name, one name per 10 ms round) finds filesystems where both
renames succeed (issue 17 measured it on GlusterFS, MooseFS and JuiceFS). Claims do not care,
their targets are unique per worker; anything that elects a winner by renaming to a common name
would.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from spool.envelope import JSON

COMMON_TARGET_WARNING = (
    "renames of one file to a common name can both succeed on this filesystem: claims are "
    "still safe (their targets are unique per worker), but nothing may elect a winner by "
    "renaming to a common name here (use unique names or O_EXCL)"
)
RACE_NAMES = 200
COMMON_SLOT = 0.01  # seconds per round of the common-target race: both racers start each round
CHILD_TIMEOUT = 10.0
Probe = dict[str, JSON]


def run_child(*args: str) -> Any:
    """Run a probe role of this module in a new process; return its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "spool.deploy.races", *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe process failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout)


def race_renames(
    src: tuple[Path, Path], dst: tuple[Path, Path], common: bool
) -> list[dict[str, Any]]:
    """Two processes rename the same RACE_NAMES files of src (seen through src[0] and src[1])
    into dst, to tagged or to common target names; their answers."""
    start_at = f"{time.time() + 0.5:.6f}"  # both children start together, after their imports
    mode = "common" if common else "tagged"
    argv = [sys.executable, "-m", "spool.deploy.races", "race"]
    procs = [
        subprocess.Popen(
            [*argv, str(src[i]), str(dst[i]), tag, start_at, str(RACE_NAMES), mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, tag in enumerate(("a", "b"))
    ]
    try:
        return [json.loads(proc.communicate(timeout=CHILD_TIMEOUT)[0]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)


def make_race_files(work: Path) -> tuple[Path, Path]:
    src, dst = work / "src", work / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(RACE_NAMES):
        (src / f"{i:04d}.json").touch()
    return src, dst


def probe_rename_race(work: Path, other: Path | None = None) -> Probe:
    src, dst = make_race_files(work)
    there = work if other is None else other / work.parent.name / work.name
    answers = race_renames((src, there / "src"), (dst, there / "dst"), common=False)
    winners = Counter(name.partition("@")[0] for name in os.listdir(dst))
    lost = sum(a["enoent"] for a in answers)
    errors = [e for a in answers for e in a["other_errors"]]
    ok = len(winners) == RACE_NAMES and set(winners.values()) == {1} and not errors
    ok = ok and lost == RACE_NAMES * 2 - sum(a["won"] for a in answers)
    summary = (
        f"each of {RACE_NAMES} names: one winner, the loser got ENOENT "
        f"({answers[0]['won']}/{answers[1]['won']} wins)"
        if ok
        else f"{len(winners)} of {RACE_NAMES} names moved, errors {errors[:3]}"
    )
    return {
        "ok": ok,
        "names": RACE_NAMES,
        "wins": [answers[0]["won"], answers[1]["won"]],
        "enoent": lost,
        "other_errors": errors,
        "summary": summary,
    }


def probe_common_target(work: Path, other: Path | None = None) -> Probe:
    """Two processes (through two mounts, with `other`) rename the same file to the same
    target name: both succeeding means "rename to a common name and see who wins" elects two
    winners here. A warning, not a failure: spool's claims rename to names unique per worker."""
    src, dst = make_race_files(work)
    there = work if other is None else other / work.parent.name / work.name
    answers = race_renames((src, there / "src"), (dst, there / "dst"), common=True)
    both = sorted(set(answers[0]["won_names"]) & set(answers[1]["won_names"]))
    errors = [e for a in answers for e in a["other_errors"]]
    through = "two processes" if other is None else f"a process here and one via {other}"
    split = f"{answers[0]['won']}/{answers[1]['won']} wins"
    summary = (
        f"{through}: each of {RACE_NAMES} renames to a common name had one winner ({split})"
        if not both
        else f"{through}: both renames to a common name succeeded in {len(both)} of "
        f"{RACE_NAMES} rounds ({split})"
    )
    result: Probe = {
        "ok": True,
        "rounds": RACE_NAMES,
        "wins": [answers[0]["won"], answers[1]["won"]],
        "both_won": len(both),
        "other_errors": errors,
        "summary": summary + (f"; errors {errors[:3]}" if errors else ""),
    }
    if both:
        result["warning"] = COMMON_TARGET_WARNING
    return result


def child_race(
    src: str, dst: str, tag: str, start_at: str, count: str, common: str = "tagged"
) -> dict[str, JSON]:
    """Rename each source to a target of its own (`NAME@tag`) as fast as it can, or to the
    common `NAME`, one name per COMMON_SLOT, so that both processes try each name together."""
    names = [f"{i:04d}.json" for i in range(int(count))]
    for name in names:  # the other host may have these cached: so does this one
        with contextlib.suppress(OSError):
            os.stat(os.path.join(src, name))
    slot = COMMON_SLOT if common == "common" else 0.0
    won, enoent, other = [], 0, []
    for i, name in enumerate(names):
        time.sleep(max(0.0, float(start_at) + i * slot - time.time()))
        target = name if common == "common" else f"{name}@{tag}"
        try:
            os.rename(os.path.join(src, name), os.path.join(dst, target))
            won.append(name)
        except FileNotFoundError:  # RACE: the other process renamed it first
            enoent += 1
        except OSError as exc:
            other.append(errno.errorcode.get(exc.errno or 0, str(exc.errno)))
    return {"won": len(won), "won_names": won, "enoent": enoent, "other_errors": other}


def child_lock(path: str) -> dict[str, JSON]:
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return {"acquired": False}
    lock.release()
    return {"acquired": True}


def child_create(path: str) -> dict[str, JSON]:
    created_at = time.time()
    Path(path).write_bytes(b"")
    return {"created_at": created_at}


CHILD_ROLES: dict[str, Callable[..., dict[str, JSON]]] = {
    "race": child_race,
    "lock": child_lock,
    "create": child_create,
}


if __name__ == "__main__":
    print(json.dumps(CHILD_ROLES[sys.argv[1]](*sys.argv[2:])))
