"""Several hosts on one spool: `python -m bench.hosts [--tasks N] [--workers W]` (as root).

On the test bed of tests/hostbed.py (network namespaces mounting one directory over sshfs):

1. drain: N no-op tasks dropped on the file server, drained by W workers on each of 1 and 2
   hosts, with sshfs's caches off and with its default caches; and the same N on local disk
   with W workers (not shared) for reference. Time from the first task written to the last
   done.
2. recovery: a host dies (its sshfs and workers killed) while its worker holds a claim; the
   time until a worker on the other host has taken the claim over, with the default lease
   (30 s, default caches) and a 5 s lease (caches off).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from spool import Spool
from spool.config import load_settings
from tests.hostbed import HostBed, available

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG = PROJECT_DIR / "bench" / "spool.toml"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.hosts: {what} did not happen within {timeout:g} s")
        time.sleep(0.02)


def count(directory: Path) -> int:
    try:
        return sum(1 for n in os.listdir(directory) if not n.startswith("."))
    except FileNotFoundError:
        return 0


def worker(root: Path, config: Path, log: Path, spawn: Callable[..., subprocess.Popen[bytes]]):
    with open(log, "ab") as out:
        return spawn(
            [sys.executable, "-m", "spool", "--root", str(root), "--config", str(config), "worker"],
            cwd=PROJECT_DIR,
            stderr=out,
        )


def drain(
    server_root: Path,
    roots: list[Path],
    workers: int,
    tasks: int,
    config: Path,
    spawn_on: Callable[[int], Callable[..., subprocess.Popen[bytes]]],
    logs: Path,
) -> tuple[float, float]:
    """(seconds from the tasks written to the first done, tasks per second from then on)."""
    server_root.mkdir(exist_ok=True)
    procs = [
        worker(root, config, logs / f"w{h}-{i}.log", spawn_on(h))
        for h, root in enumerate(roots)
        for i in range(workers)
    ]
    workers_dir = server_root / ".workers"
    wait_for(lambda: count(workers_dir) >= 2 * len(procs), 30, "worker start-up")
    app = Spool(settings=load_settings(str(server_root), str(config), env={}))
    app.enqueue_many([{"task": "noop"} for _ in range(tasks)])
    written = time.monotonic()
    done = server_root / "default" / "done"
    wait_for(lambda: count(done) > 0, 60, "the first task done")
    first = time.monotonic()
    wait_for(lambda: count(done) >= tasks, 600, "the drain")
    rate = tasks / (time.monotonic() - first)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)
    return first - written, rate


def shared_config(directory: Path, lease: float | None) -> Path:
    path = directory / "hosts.toml"
    extra = "\n[cluster]\nshared = true\n" + (f"lease = {lease}\n" if lease else "")
    path.write_text(CONFIG.read_text() + extra)
    return path


def recovery(work: Path, cache: bool, lease: float | None) -> float:
    """Seconds from a host's death to its claim being taken over by the other host."""
    config = shared_config(work, lease)
    with HostBed(work / "bed", hosts=2, cache=cache) as bed:
        server_root = bed.export / "spool"
        server_root.mkdir()
        processing = server_root / "default" / "processing"
        first = worker(
            bed.mount(0) / "spool",
            config,
            work / "r0.log",
            lambda argv, **kw: bed.spawn(0, argv, **kw),
        )
        app = Spool(settings=load_settings(str(server_root), str(config), env={}))
        app.enqueue("wait", [600])
        tag = f"-{first.pid}-"
        wait_for(lambda: any(tag in n for n in os.listdir(processing)), 30, "the claim")
        worker(
            bed.mount(1) / "spool",
            config,
            work / "r1.log",
            lambda argv, **kw: bed.spawn(1, argv, **kw),
        )
        time.sleep(2 * (lease or 30))  # the other host must not take a live claim
        assert any(tag in n for n in os.listdir(processing)), "a live claim was taken"
        bed.kill_host(0)
        killed = time.monotonic()
        wait_for(lambda: not any(tag in n for n in os.listdir(processing)), 120, "recovery")
        return time.monotonic() - killed


def report(what: str, args: argparse.Namespace, seen: float, rate: float) -> None:
    print(
        f"{what} x {args.workers} worker(s): first of {args.tasks} tasks done after "
        f"{seen:.2f} s, then {rate:,.0f} tasks/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hosts")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="workers per host")
    args = parser.parse_args()
    reason = available()
    if reason is not None:
        raise SystemExit(f"bench.hosts: the host bed cannot run here: {reason}")
    with tempfile.TemporaryDirectory(prefix="spool-bench-hosts-") as scratch:
        work = Path(scratch)
        local = work / "local"
        local.mkdir()
        seen, rate = drain(
            local / "spool",
            [local / "spool"],
            args.workers,
            args.tasks,
            CONFIG,
            lambda h: subprocess.Popen,
            work,
        )
        report("local disk, not shared, 1 host", args, seen, rate)
        for cache in (False, True):
            for hosts in (1, 2):
                run = work / f"drain-{cache}-{hosts}"
                run.mkdir()
                config = shared_config(run, None)
                with HostBed(run / "bed", hosts=hosts, cache=cache) as bed:
                    roots = [bed.mount(h) / "spool" for h in range(hosts)]

                    def spawn_on(h: int, bed: HostBed = bed) -> Callable[..., subprocess.Popen]:
                        return lambda argv, **kw: bed.spawn(h, argv, **kw)

                    seen, rate = drain(
                        bed.export / "spool", roots, args.workers, args.tasks, config, spawn_on, run
                    )
                caches = "default caches" if cache else "caches off"
                report(f"sshfs, {caches}, {hosts} host(s)", args, seen, rate)
        for cache, lease in ((False, 5.0), (True, None)):
            run = work / f"recovery-{cache}"
            run.mkdir()
            took = recovery(run, cache, lease)
            caches = "default caches" if cache else "caches off"
            print(
                f"host killed ({caches}, lease {lease or 30:g} s): its claim taken over "
                f"after {took:.1f} s"
            )


if __name__ == "__main__":
    main()
