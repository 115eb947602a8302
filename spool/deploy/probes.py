"""The doctor's probes of a root's filesystem, each in a scratch directory of its own.

Every probe works in a scratch directory `<root>/.doctor-<pid>-<random>/` (a dot-name, so
never a queue) that is removed afterwards, also on error. A probe's result is a dict with `ok`
and a one-line `summary`; a probe that raised is `ok: false` with the `error`; a probe may add a
`warning` without failing. Probes that need a second process are in spool.deploy.races.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from spool import watch
from spool.deploy.races import (
    Probe,
    probe_common_target,
    probe_rename_race,
    run_child,
)
from spool.fsio import write_atomic

FSYNC_ROUNDS = 50
EVENT_WAIT = 1.0
VISIBLE_WAIT = 2.0
MAX_SKEW_MS = 1000.0
RENEWAL_WAIT = 65.0  # longer than the attribute caches worth supporting (NFS acregmax: 60 s)


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
