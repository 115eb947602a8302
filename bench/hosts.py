"""Several hosts on one spool: `python -m bench.hosts [--fs ENGINE] [--tasks N] [--workers W]`
(as root).

On a bed of simulated hosts (tests/netbed.py: network namespaces, each host with its own FUSE
mount of one directory): `--fs sshfs` (the default; tests/hostbed.py), `glusterfs`, `moosefs`
or `juicefs` (tests/dfsbed.py, the engines' default caches).

1. drain: N no-op tasks dropped through no host under test (sshfs: on the file server's disk),
   drained by W workers on each of 1 and 2 hosts (sshfs: with its caches off and with its
   default caches); and the same N on local disk with W workers (not shared) for reference.
   Rate from the first task done to the last; with the CPU the machine spent meanwhile, and
   how it split between the workers (with their handler processes), the FUSE clients and the
   servers.
2. pick-up: a worker idles on host 1; host 0 enqueues one task at a time (through its own
   mount) and waits until it is done: the time from the enqueue to the task's start on host 1
   (median and worst of 20; sshfs with its caches off).
3. recovery: a host dies (its FUSE client and workers killed) while its worker holds a claim;
   the time until a worker on the other host has taken the claim over (sshfs: the default
   lease of 30 s with default caches, and 5 s with caches off; the others: 5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spool import Spool
from spool.config import load_settings
from tests.dfsbed import ENGINES
from tests.hostbed import HostBed, available
from tests.netbed import NetBed, run

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG = PROJECT_DIR / "bench" / "spool.toml"
TICKS = os.sysconf("SC_CLK_TCK")
Spawn = Callable[..., subprocess.Popen[bytes]]


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.hosts: {what} did not happen within {timeout:g} s")
        time.sleep(interval)


def count(directory: Path) -> int:
    try:
        return sum(1 for n in os.listdir(directory) if not n.startswith("."))
    except FileNotFoundError:
        return 0


def worker(root: Path, config: Path, log: Path, spawn: Spawn) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return spawn(
            [sys.executable, "-m", "spool", "--root", str(root), "--config", str(config), "worker"],
            cwd=PROJECT_DIR,
            stderr=out,
        )


# -- CPU accounting ---------------------------------------------------------------------------


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICKS, sum(fields) / TICKS


def cpu_of(pid: int) -> float:
    """CPU seconds of a process and its reaped children."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def with_descendants(pids: list[int]) -> list[int]:
    """`pids` and every process below them (a worker's handler processes)."""
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except OSError:
                continue
    return found


@dataclass
class CpuGroups:
    """Processes whose CPU a drain accounts for, by role."""

    workers: list[int]
    clients: list[int]
    servers: list[int]

    def seconds(self) -> tuple[float, float, float]:
        return tuple(sum(cpu_of(p) for p in group) for group in self.groups())  # type: ignore[return-value]

    def groups(self) -> tuple[list[int], list[int], list[int]]:
        return self.workers, self.clients, self.servers


def bed_pids(bed: NetBed | None) -> tuple[list[int], list[int]]:
    """(FUSE clients, servers): the processes in the hosts' and in the server's namespaces."""
    if bed is None:
        return [], []
    clients = [int(p) for ns in bed.host_ns for p in run(["ip", "netns", "pids", ns]).split()]
    clients += [proc.pid for proc in bed._mounters if proc is not None]
    servers = [int(p) for p in run(["ip", "netns", "pids", bed.server_ns]).split()]
    view = os.fsencode(bed.view())  # the bench's own client mount (dfs beds): not a server's
    servers = [p for p in servers if view not in cmdline(p)]
    return sorted(set(clients)), sorted(set(servers) - set(clients))


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@dataclass
class Drain:
    seen: float  # seconds from the tasks written to the first done
    rate: float  # tasks per second from then on
    busy: float  # share of the machine's CPU busy during the drain (1.0: both cores)
    split: tuple[float, float, float]  # CPU seconds: workers, FUSE clients, servers
    other: float  # CPU seconds of everything else on the machine (this bench, other users)


def drain(
    view_root: Path,
    roots: list[Path],
    workers: int,
    tasks: int,
    config: Path,
    spawn_on: Callable[[int], Spawn],
    logs: Path,
    bed: NetBed | None,
) -> Drain:
    view_root.mkdir(exist_ok=True)
    procs = [
        worker(root, config, logs / f"w{h}-{i}.log", spawn_on(h))
        for h, root in enumerate(roots)
        for i in range(workers)
    ]
    workers_dir = view_root / ".workers"
    wait_for(lambda: count(workers_dir) >= 2 * len(procs), 30, "worker start-up")
    app = Spool(settings=load_settings(str(view_root), str(config), env={}))
    app.enqueue_many([{"task": "noop"} for _ in range(tasks)])
    written = time.monotonic()
    done = view_root / "default" / "done"
    wait_for(lambda: count(done) > 0, 60, "the first task done")
    first = time.monotonic()
    groups = CpuGroups(with_descendants([p.pid for p in procs]), *bed_pids(bed))
    cpu_before, machine_before = groups.seconds(), machine_busy()
    wait_for(lambda: count(done) >= tasks, 900, "the drain", 0.25)  # (listing costs CPU too)
    took = time.monotonic() - first
    cpu_after, machine_after = groups.seconds(), machine_busy()
    busy_seconds = machine_after[0] - machine_before[0]
    busy = busy_seconds / (machine_after[1] - machine_before[1])
    split = tuple(b - a for a, b in zip(cpu_before, cpu_after, strict=True))
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)
    other = busy_seconds - sum(split)
    return Drain(first - written, tasks / took, busy, split, other)  # type: ignore[arg-type]


def shared_config(directory: Path, lease: float | None) -> Path:
    path = directory / "hosts.toml"
    extra = "\n[cluster]\nshared = true\n" + (f"lease = {lease}\n" if lease else "")
    path.write_text(CONFIG.read_text() + extra)
    return path


@contextmanager
def make_bed(fs: str, directory: Path, hosts: int, cache: bool) -> Iterator[NetBed]:
    bed: NetBed = (
        HostBed(directory, hosts=hosts, cache=cache)
        if fs == "sshfs"
        else ENGINES[fs](directory, hosts=hosts)
    )
    with bed:
        yield bed


def spawner(bed: NetBed, host: int) -> Spawn:
    return lambda argv, **kw: bed.spawn(host, argv, **kw)


def recovery(fs: str, work: Path, cache: bool, lease: float | None) -> float:
    """Seconds from a host's death to its claim being taken over by the other host."""
    config = shared_config(work, lease)
    with make_bed(fs, work / "bed", 2, cache) as bed:
        view_root = bed.view() / "spool"
        view_root.mkdir()
        processing = view_root / "default" / "processing"
        first = worker(bed.mount(0) / "spool", config, work / "r0.log", spawner(bed, 0))
        app = Spool(settings=load_settings(str(view_root), str(config), env={}))
        app.enqueue("wait", [600])
        tag = f"-{first.pid}-"
        wait_for(lambda: any(tag in n for n in os.listdir(processing)), 30, "the claim")
        worker(bed.mount(1) / "spool", config, work / "r1.log", spawner(bed, 1))
        time.sleep(2 * (lease or 30))  # the other host must not take a live claim
        assert any(tag in n for n in os.listdir(processing)), "a live claim was taken"
        bed.kill_host(0)
        killed = time.monotonic()
        wait_for(lambda: not any(tag in n for n in os.listdir(processing)), 120, "recovery")
        return time.monotonic() - killed


def pickup(fs: str, work: Path, cache: bool, rounds: int = 20) -> list[float]:
    """Seconds from an enqueue on host 0 to the task's start on host 1, per round."""
    config = shared_config(work, None)
    with make_bed(fs, work / "bed", 2, cache) as bed:
        (bed.view() / "spool").mkdir()
        worker(bed.mount(1) / "spool", config, work / "p1.log", spawner(bed, 1))
        wait_for(lambda: count(bed.view() / "spool" / ".workers") >= 2, 30, "worker start-up")
        producer_root = bed.mount(0) / "spool"
        app = Spool(settings=load_settings(str(producer_root), str(config), env={}))
        done = bed.view() / "spool" / "default" / "done"
        took = []
        for _ in range(rounds):
            task_id = app.enqueue("noop")
            path = done / f"{task_id}.json"
            wait_for(path.exists, 120, "a pick-up")
            task = json.loads(path.read_bytes())
            took.append(float(task["started_at"]) - float(task["enqueued_at"]))
        return took


def report(what: str, args: argparse.Namespace, result: Drain) -> None:
    workers, clients, servers = result.split
    print(
        f"{what} x {args.workers} worker(s): first of {args.tasks} tasks done after "
        f"{result.seen:.2f} s, then {result.rate:,.0f} tasks/s; CPU {result.busy:.0%} of the "
        f"machine busy (CPU s: workers {workers:.1f}, FUSE clients {clients:.1f}, "
        f"servers {servers:.1f}, everything else {result.other:.1f})",
        flush=True,
    )


def drains(fs: str, args: argparse.Namespace, work: Path) -> None:
    for cache in (False, True) if fs == "sshfs" else (False,):
        rates = []
        for hosts in (1, 2):
            run_dir = work / f"drain-{cache}-{hosts}"
            run_dir.mkdir()
            config = shared_config(run_dir, None)
            with make_bed(fs, run_dir / "bed", hosts, cache) as bed:
                roots = [bed.mount(h) / "spool" for h in range(hosts)]
                result = drain(
                    bed.view() / "spool",
                    roots,
                    args.workers,
                    args.tasks,
                    config,
                    lambda h, bed=bed: spawner(bed, h),  # type: ignore[misc]
                    run_dir,
                    bed,
                )
            rates.append(result.rate)
            caches = "" if fs != "sshfs" else (", default caches" if cache else ", caches off")
            report(f"{fs}{caches}, {hosts} host(s)", args, result)
        print(f"{fs}: 2 hosts / 1 host = {rates[1] / rates[0]:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hosts")
    parser.add_argument("--fs", choices=["sshfs", *ENGINES], default="sshfs")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="workers per host")
    args = parser.parse_args()
    reason = available() if args.fs == "sshfs" else ENGINES[args.fs].available()
    if reason is not None:
        raise SystemExit(f"bench.hosts: the {args.fs} bed cannot run here: {reason}")
    with tempfile.TemporaryDirectory(prefix="spool-bench-hosts-") as scratch:
        work = Path(scratch)
        local = work / "local"
        local.mkdir()
        result = drain(
            local / "spool",
            [local / "spool"],
            args.workers,
            args.tasks,
            CONFIG,
            lambda h: subprocess.Popen,
            work,
            None,
        )
        report("local disk, not shared, 1 host", args, result)
        drains(args.fs, args, work)
        run_dir = work / "pickup"
        run_dir.mkdir()
        took = pickup(args.fs, run_dir, False)  # (sshfs's default caches: 20 s, see the docs)
        caches = " (caches off)" if args.fs == "sshfs" else ""
        print(
            f"{args.fs}{caches}: pick-up from an enqueue on host 0 to the start on host 1: "
            f"median {statistics.median(took) * 1000:.0f} ms, worst {max(took) * 1000:.0f} ms",
            flush=True,
        )
        leases = ((False, 5.0), (True, None)) if args.fs == "sshfs" else ((False, 5.0),)
        for cache, lease in leases:
            run_dir = work / f"recovery-{cache}"
            run_dir.mkdir()
            took = recovery(args.fs, run_dir, cache, lease)
            print(
                f"{args.fs}: host killed (lease {lease or 30:g} s): its claim taken over "
                f"after {took:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
