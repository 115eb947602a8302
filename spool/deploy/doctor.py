"""The doctor: probe the root's filesystem from this host and say which mode is safe.

Every probe works in a scratch directory `<root>/.doctor-<pid>-<random>/` (a dot-name, so
never a queue) that is removed afterwards, also on error. Probes that need a second process
run this module as a child (`python -m spool.deploy.doctor ROLE ...`, one JSON line on stdout), each
bounded by a timeout. A probe's result is a dict with `ok` and a one-line `summary`; a probe
that raised is `ok: false` with the `error`.

On a network filesystem inotify does not see other hosts' changes and locks may be
host-local: there the verdict is shared mode (see spool.cluster), which relies only on what the
probes check on the server — one winner per rename, exclusive creates.

A probe may add a `warning` without failing: the common-target race (two processes, or a
process on each mount with --other-mount, rename the same file to the same name, one name per
10 ms round) finds filesystems where both renames succeed (issue 17 measured it on GlusterFS,
MooseFS and JuiceFS). Claims do not care, their targets are unique per worker; anything that
elects a winner by renaming to a common name would.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from spool import watch
from spool.envelope import JSON
from spool.fsio import write_atomic
from spool.mounts import filesystem_of

SINGLE_HOST = "single host: safe (workers on this host only)"
SEVERAL_HOSTS = (
    "several hosts: safe in shared mode ([cluster] shared, automatic on this filesystem): "
    "workers poll and hold leases; set [cluster] lease above the mount's attribute cache time"
)
COMMON_TARGET_WARNING = (
    "renames of one file to a common name can both succeed on this filesystem: claims are "
    "still safe (their targets are unique per worker), but nothing may elect a winner by "
    "renaming to a common name here (use unique names or O_EXCL)"
)
# where the project's CI runs shared mode (tests/test_hosts.py, tests/test_dfs.py)
TESTED_SHARED = (
    "sshfs 3.7.3 (drains, dead and cut-off hosts, schedulers, unique keys, pause); "
    "GlusterFS 10.3 and MooseFS 3.0.117 (a drain, a dead and a cut-off client); not JuiceFS, "
    "NFS or CephFS yet: check those with --other-mount and a trial drain"
)
RACE_NAMES = 200
COMMON_SLOT = 0.01  # seconds per round of the common-target race: both racers start each round
FSYNC_ROUNDS = 50
CHILD_TIMEOUT = 10.0
EVENT_WAIT = 1.0
VISIBLE_WAIT = 2.0
MAX_SKEW_MS = 1000.0
RENEWAL_WAIT = 65.0  # longer than the attribute caches worth supporting (NFS acregmax: 60 s)
LEASE_MARGIN_SECONDS = 3.0  # renewals every 0.5 s, whole-second mtimes, a sweep every 2 s
Probe = dict[str, JSON]


def run_child(*args: str) -> Any:
    """Run a probe role of this module in a new process; return its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "spool.deploy.doctor", *args],
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
    argv = [sys.executable, "-m", "spool.deploy.doctor", "race"]
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


def errno_of(action: Callable[[], object]) -> str | None:
    """The errno name `action` fails with, or None if it succeeds."""
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return None


def probe_o_excl(work: Path) -> Probe:
    path = work / "excl"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    def create() -> None:
        os.close(os.open(path, flags, 0o600))

    first, second = errno_of(create), errno_of(create)
    ok = first is None and second in ("EEXIST", "EPERM")  # EPERM: sshfs's lost race
    return {
        "ok": ok,
        "second_create_errno": second,
        "summary": f"second exclusive create fails with {second}",
    }


def probe_no_replace(work: Path) -> Probe:
    source, target = work / "a", work / "b"
    source.write_bytes(b"a")
    target.write_bytes(b"b")
    os.rename(source, target)
    replaces = target.read_bytes() == b"a"
    source.write_bytes(b"a")
    (work / "c").write_bytes(b"c")
    first = errno_of(lambda: os.link(source, work / "linked"))
    second = errno_of(lambda: os.link(work / "c", work / "linked"))
    linking = f"fails with {first}" if first else f"onto an existing name fails with {second}"
    summary = (
        f"rename {'replaces' if replaces else 'does not replace'} an existing target; "
        f"link {linking}"
    )
    return {  # spool needs neither: informational (rename targets are unique names)
        "ok": True,
        "rename_replaces_target": replaces,
        "second_link_errno": second,
        "summary": summary,
    }


def lock_blocks(held: Path, tried: Path) -> bool:
    """Whether a lock held here on `held` stops another process locking `tried`."""
    lock = FileLock(held)
    lock.acquire(timeout=0)
    try:
        return not run_child("lock", str(tried))["acquired"]
    finally:
        lock.release()


def probe_locks(work: Path) -> Probe:
    exclusive = lock_blocks(work / "lock", work / "lock")
    summary = "a lock blocks another process" if exclusive else "locks do NOT exclude"
    return {"ok": exclusive, "exclusive": exclusive, "summary": summary}


def probe_clock_skew(work: Path) -> Probe:
    before = time.time()
    (work / "clock").write_bytes(b"now")
    after = time.time()
    mtime = (work / "clock").stat().st_mtime
    off = 0.0 if before <= mtime <= after else mtime - (before if mtime < before else after)
    skew_ms = round(off * 1000, 1)
    return {
        "ok": abs(skew_ms) < MAX_SKEW_MS,
        "skew_ms": skew_ms,
        "summary": f"file mtime vs this host's clock: {skew_ms:+.1f} ms",
    }


class Arrival:
    """A watchdog inotify callback that notes when the first event came."""

    def __init__(self) -> None:
        self.seen = threading.Event()
        self.at = 0.0

    def on_event(self, event: Any) -> None:
        if not self.seen.is_set():
            self.at = time.time()
            self.seen.set()

    def on_watch_deleted(self, wd: int) -> None:
        pass

    def on_queue_overflow(self) -> None:
        self.seen.set()


def probe_inotify(work: Path) -> Probe:
    inotify_c = watch.inotify_c
    if inotify_c is None:
        return {
            "ok": True,
            "seen": False,
            "delay_ms": None,
            "summary": "inotify unavailable: workers rely on rescans",
        }
    constants = inotify_c.InotifyConstants
    arrival = Arrival()
    inotify = inotify_c.InotifyFD()
    inotify.start()
    try:
        mask = constants.IN_CREATE | constants.IN_MOVED_TO
        inotify.add_callback(os.fsencode(work), mask, arrival, 1)
        created_at = float(run_child("create", str(work / "arrived"))["created_at"])
        arrival.seen.wait(timeout=max(0.0, created_at + EVENT_WAIT - time.time()))
    finally:
        inotify.stop()
        inotify.join(timeout=5)
    seen = arrival.seen.is_set() and arrival.at > 0
    delay_ms = round((arrival.at - created_at) * 1000, 1) if seen else None
    summary = (
        f"event from another process seen after {delay_ms} ms"
        if seen
        else f"no event within {EVENT_WAIT:g} s: workers rely on rescans"
    )
    return {"ok": True, "seen": seen, "delay_ms": delay_ms, "summary": summary}


def probe_fsync(work: Path) -> Probe:
    data = b"x" * 120
    (work / "tmp").mkdir()
    costs = []
    for i in range(FSYNC_ROUNDS):
        started = time.perf_counter()
        write_atomic(data, work / "tmp", work / f"{i}.json")
        costs.append(time.perf_counter() - started)
    p50_ms = round(statistics.median(costs) * 1000, 3)
    return {
        "ok": True,
        "p50_ms": p50_ms,
        "rounds": FSYNC_ROUNDS,
        "summary": f"write+fsync+rename+fsync-dir p50 {p50_ms} ms",
    }


def probe_mtime(work: Path) -> Probe:
    stamps = []
    for i in range(10):
        (work / f"m{i}").write_bytes(b"")
        stamps.append((work / f"m{i}").stat().st_mtime_ns)
        time.sleep(0.001)
    step = 1
    while step < 1_000_000_000 and all(s % (step * 10) == 0 for s in stamps):
        step *= 10
    sub_second = step < 1_000_000_000
    summary = f"st_mtime_ns in steps of {step} ns" if sub_second else "whole seconds only"
    return {"ok": True, "sub_second": sub_second, "step_ns": step, "summary": summary}


def probe_other_mount(work: Path, other: Path) -> Probe:
    seen_dir = other / work.parent.name / work.name
    name = f"visible-{secrets.token_hex(4)}"
    written = time.monotonic()
    (work / name).write_bytes(b"")
    delay_ms: float | None = None
    while time.monotonic() - written < VISIBLE_WAIT:
        if seen_dir.is_dir() and name in os.listdir(seen_dir):
            delay_ms = round((time.monotonic() - written) * 1000, 1)
            break
        time.sleep(0.005)
    if delay_ms is None:
        return {
            "ok": False,
            "visible_ms": None,
            "locks": None,
            "summary": f"a file written here is not seen via {other} within "
            f"{VISIBLE_WAIT:g} s (not the same directory?)",
        }
    shared = lock_blocks(work / "lock", seen_dir / "lock")
    locks = "shared" if shared else "host-local"
    renewal = renewal_seen_after(work / "lease", seen_dir / "lease")
    shown = f"not within {RENEWAL_WAIT:g} s" if renewal is None else f"after {renewal:.1f} s"
    summary = (
        f"listing via {other} sees a new file after {delay_ms} ms; locks are {locks}; "
        f"a renewed mtime shows there {shown}"
    )
    return {
        "ok": True,
        "visible_ms": delay_ms,
        "locks": locks,
        "renewal_seen_s": renewal,
        "summary": summary,
    }


def renewal_seen_after(here: Path, there: Path) -> float | None:
    """Seconds until a lease renewal made here (a new mtime) shows in a stat via the other
    mount, once that mount has the old mtime cached; None if not within RENEWAL_WAIT."""
    old = time.time() - 100
    here.write_bytes(b"")
    os.utime(here, (old, old))
    deadline = time.monotonic() + RENEWAL_WAIT
    while int(os.stat(there).st_mtime) != int(old):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    os.utime(here)
    renewed = time.monotonic()
    while int(os.stat(there).st_mtime) == int(old):
        if time.monotonic() - renewed > RENEWAL_WAIT:
            return None
        time.sleep(0.01)
    return time.monotonic() - renewed


PROBES: dict[str, Callable[[Path], Probe]] = {
    "rename_race": probe_rename_race,
    "common_target": probe_common_target,
    "o_excl": probe_o_excl,
    "no_replace": probe_no_replace,
    "locks": probe_locks,
    "clock_skew": probe_clock_skew,
    "inotify": probe_inotify,
    "fsync": probe_fsync,
    "mtime": probe_mtime,
}


def run_probe(probe: Callable[[Path], Probe], work: Path) -> Probe:
    try:
        work.mkdir()
        return probe(work)
    except (
        OSError,
        RuntimeError,
        ValueError,
        KeyError,
        Timeout,
        subprocess.SubprocessError,
    ) as exc:
        return {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "summary": f"failed: {type(exc).__name__}: {exc}",
        }


def run_probes(root: Path, other: Path | None) -> dict[str, Probe]:
    """Run every probe in a scratch directory under `root` (removed afterwards)."""
    scratch = root / f".doctor-{os.getpid()}-{secrets.token_hex(4)}"
    scratch.mkdir()
    try:
        results = {name: run_probe(probe, scratch / name) for name, probe in PROBES.items()}
        if other is not None:
            results["other_mount"] = run_probe(
                lambda work: probe_other_mount(work, other), scratch / "other"
            )
            results["rename_race_other_mount"] = run_probe(
                lambda work: probe_rename_race(work, other), scratch / "race-other"
            )
            results["common_target_other_mount"] = run_probe(
                lambda work: probe_common_target(work, other), scratch / "common-other"
            )
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def verdict(
    fs: dict[str, JSON], probes: dict[str, Probe] | None, lease_seconds: float = 30.0
) -> tuple[bool, str]:
    """(safe, the line saying which mode is) from the filesystem type and the probes."""
    failed = [name for name, result in (probes or {}).items() if not result["ok"]]
    if failed:
        return False, f"NOT safe: probe failed ({', '.join(failed)})"
    other = (probes or {}).get("other_mount", {})
    if "renewal_seen_s" in other:
        seen = other["renewal_seen_s"]
        if seen is None or float(seen) + LEASE_MARGIN_SECONDS >= lease_seconds:
            shown = "not seen" if seen is None else f"seen after {float(seen):.1f} s"
            return False, (
                f"NOT safe in shared mode: a renewed lease is {shown} via the other mount, "
                f"too close to [cluster] lease = {lease_seconds:g} s: raise the lease or "
                "shorten the mount's attribute cache"
            )
    if fs["network"]:
        return True, SEVERAL_HOSTS + ("" if probes else " (by filesystem type; --fs probes it)")
    if probes is None:
        return True, f"{SINGLE_HOST} (by filesystem type; --fs probes it)"
    if not probes["inotify"]["seen"]:
        return True, f"{SINGLE_HOST}; no filesystem events, workers rely on rescans"
    return True, SINGLE_HOST


def examine(
    root: Path,
    config: Path | None,
    queues: list[str],
    *,
    probe: bool,
    other: Path | None,
    lease_seconds: float = 30.0,
) -> dict[str, JSON]:
    """The doctor's report: root, config, queues, filesystem, probes (if asked), verdict."""
    fs = filesystem_of(root)
    probes = run_probes(root, other) if probe else None
    safe, line = verdict(fs, probes, lease_seconds)
    report: dict[str, JSON] = {
        "root": str(root.resolve()),
        "config": None if config is None else str(config),
        "queues": queues,
        "filesystem": fs,
        "verdict": line,
        "safe": safe,
    }
    if fs["network"]:
        report["tested_shared_on"] = TESTED_SHARED
    if probes is not None:
        report["probes"] = probes
        report["warnings"] = sorted({str(p["warning"]) for p in probes.values() if "warning" in p})
    return report


def render(report: dict[str, JSON]) -> str:
    """The report as plain lines."""
    fs = report["filesystem"]
    kind = "shared-capable / network" if fs["network"] else "local"
    lines = [
        f"root: {report['root']}",
        f"config: {report['config'] or 'none'}",
        f"queues: {shown_queues(report['queues'])}",
        f"filesystem: {fs['fstype']} on {fs['mount_point']} ({kind}: {fs['why']})",
    ]
    for name, result in report.get("probes", {}).items():
        mark = "FAIL" if not result["ok"] else "WARN" if "warning" in result else "ok  "
        lines.append(f"  {mark} {name}: {result['summary']}")
    lines += [f"warning: {text}" for text in report.get("warnings", [])]
    if fs["network"]:
        lines.append(f"shared mode is tested on: {report['tested_shared_on']}")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


def shown_queues(queues: list[str], most: int = 10) -> str:
    if not queues:
        return "none"
    more = f", ... ({len(queues)} in all)" if len(queues) > most else ""
    return ", ".join(queues[:most]) + more


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
