"""Core figures of spool, measured with real worker subprocesses on a real disk.

    python -m bench core [--quick] [--out FILE] [--tmp DIR] [--keep]

Figures (each repeated 3 times: median and min-max; once with --quick, on smaller sizes):

1. idle pick-up latency: one resident idle worker; tasks enqueued one at a time, 20 ms apart,
   with `Spool.enqueue`; the handler `stamp` returns `time.time()` at its start, which lands in
   the done file as `result`. Two definitions, both reported:
     - from `enqueued_at` (stamped by the producer inside enqueue, *before* its durable write)
       to handler start: what the task file itself shows (the spec's "enqueue to handler start");
     - from the moment `Spool.enqueue` returned in the producer to handler start (can be
       negative: the task is visible at its rename, before the producer's directory fsync).
   The parent's share (`started_at` in the done file, taken by the worker just before it sends
   the task to its handler process) is reported too, so the handler round trip shows apart.
2. drain rate: N no-op tasks queued first (enqueue_many), then 2 workers start; the rate counts
   from the workers' start (so it includes interpreter and handler-process start-up) to the
   last `finished_at`, and "steady" from the first `started_at` to the last `finished_at`.
   Also with `--burst` workers. CPU per task of the worker parents and handler children comes
   from /proc (utime + stime), which the other load on the machine does not inflate much.
3. enqueue rate: one by one with `Spool.enqueue` (durable each), in bulk with
   `Spool.enqueue_many`, and with `spool enqueue --from FILE.jsonl` in a subprocess (wall time
   including the interpreter's start; "net" subtracts the same command on an empty file).
4. claim rate with a big backlog vs a small one, one worker, no-op tasks; rate = tasks / time
   from the first task's `started_at` to the last one's `finished_at` over a window, so the
   worker's start-up (and its first listing of the backlog) is left out, while the periodic
   rescans it does as it runs are in:
     - resident worker, small: kept fed, 100 more tasks enqueued (enqueue_many) whenever fewer
       than 100 wait; a window of W tasks after the first S, as for the big backlog;
     - resident worker, big: a window of W tasks (after skipping the first S) of a 100,000 task
       backlog (topped up to 100,000 before each repetition);
     - burst worker (rescans every 0.25 s while it drains): a window of W tasks after S, of a
       backlog of S + W + 100 (small) vs of 100,000 (big).

Everything runs under one fresh directory on the same filesystem as the project (never tmpfs);
nothing is deleted until the very end (this disk is mounted with `discard`: creating files
right after deleting thousands is up to 10x slower for ~20 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spool import Spool

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
CONFIG = BENCH_DIR / "spool.toml"
CLK_TCK = os.sysconf("SC_CLK_TCK")
QUEUE = "default"


# ---- sizes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    reps: int
    latency_tasks: int
    latency_gap: float
    drain_tasks: int
    one_by_one: int
    bulk: int
    cli_lines: int
    big_backlog: int
    skip: int
    window: int
    round_size: int
    window_seconds: float


FULL = Sizes(
    reps=3,
    latency_tasks=200,
    latency_gap=0.020,
    drain_tasks=5000,
    one_by_one=500,
    bulk=5000,
    cli_lines=5000,
    big_backlog=100_000,
    skip=200,
    window=4000,
    round_size=100,
    window_seconds=30.0,
)
QUICK = Sizes(
    reps=1,
    latency_tasks=50,
    latency_gap=0.020,
    drain_tasks=1000,
    one_by_one=100,
    bulk=1000,
    cli_lines=1000,
    big_backlog=10_000,
    skip=100,
    window=800,
    round_size=100,
    window_seconds=5.0,
)
PROBE_OK_US = 40.0
NOTES: list[str] = []  # anything a reader of the table must know (windows cut short)


# ---- helpers ------------------------------------------------------------------------------


class Lab:
    """The scratch directory of one run: fresh roots, worker logs, and clean-up at the end."""

    def __init__(self, tmp_parent: str | None, keep: bool) -> None:
        parent = tmp_parent or pick_tmp_parent()
        self.base = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=parent))
        self.keep = keep
        self.count = 0
        self.probes = 0
        self.procs: list[subprocess.Popen[bytes]] = []

    def root(self, label: str) -> Path:
        self.count += 1
        path = self.base / f"{self.count:02d}-{label}"
        path.mkdir()
        return path

    def worker(self, root: Path, *args: str, wrap: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start `python -m spool --root R --config bench/spool.toml worker ARGS`, log to a file."""
        log = open(root.parent / f"{root.name}.worker{len(self.procs)}.log", "ab")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(
                [*wrap, *spool_command(root, "worker", *args)],
                cwd=PROJECT_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=bench_env(),
            )
        self.procs.append(proc)
        return proc

    def create_probe(self, max_wait: float) -> tuple[float, float]:
        """(p50 us of creating an empty file here, s waited for it to fall to PROBE_OK_US).

        Creating files on this disk costs ~10 us, but 200-700 us for a while after someone
        (another test suite, or this bench) deleted thousands of files; every figure here
        creates files, so a step starts only when creation is cheap again (or after max_wait).
        What the step before left dirty is written back first (sync), so no step pays for
        another's writes.
        """
        os.sync()
        started = time.monotonic()
        while True:
            self.probes += 1
            probe = self.base / f"probe-{self.probes:03d}"
            probe.mkdir()
            times = []
            for i in range(100):
                t = time.perf_counter()
                os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660))
                times.append(time.perf_counter() - t)
            p50 = statistics.median(times) * 1e6
            waited = time.monotonic() - started
            if p50 <= PROBE_OK_US or waited >= max_wait:
                return p50, waited
            time.sleep(2.0)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.keep:
            print(f"kept {self.base}", file=sys.stderr)
        else:
            shutil.rmtree(self.base, ignore_errors=True)


def pick_tmp_parent() -> str:
    """The system temp dir when it is on the project's filesystem (not tmpfs), else bench/."""
    tmp = tempfile.gettempdir()
    if os.stat(tmp).st_dev == os.stat(PROJECT_DIR).st_dev and fs_type(tmp) != "tmpfs":
        return tmp
    return str(BENCH_DIR)


def fs_type(path: str) -> str:
    """The type of the mount holding `path` (longest mount point prefix in /proc/mounts)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOL_")}
    env["PYTHONPATH"] = str(PROJECT_DIR)
    return env


def spool_command(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "spool", "--root", str(root), "--config", str(CONFIG), *args]


def queue_dir(root: Path, state: str) -> Path:
    return root / QUEUE / state


def count(directory: Path) -> int:
    try:
        return len(os.listdir(directory))
    except FileNotFoundError:
        return 0


def wait_for(condition: Callable[[], bool], timeout: float, interval: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def done_path(root: Path, task_id: str) -> Path:
    return queue_dir(root, "done") / f"{task_id}.json"


def read_done(root: Path, ids: Sequence[str]) -> list[dict[str, Any]]:
    return [json.loads(done_path(root, i).read_bytes()) for i in ids]


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM (the worker finishes its attempt and exits 0); SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, in seconds (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def noop_tasks(n: int) -> list[dict[str, Any]]:
    return [{"task": "noop"} for _ in range(n)]


def fill(app: Spool, n: int, chunk: int = 10_000) -> list[str]:
    ids: list[str] = []
    while n > 0:
        take = min(chunk, n)
        ids += app.enqueue_many(noop_tasks(take))
        n -= take
    return ids


def span_rate(tasks: Sequence[dict[str, Any]]) -> float:
    """Tasks per second from the first start to the last finish."""
    span = max(t["finished_at"] for t in tasks) - min(t["started_at"] for t in tasks)
    return len(tasks) / span if span > 0 else float("inf")


# ---- 1. idle pick-up latency --------------------------------------------------------------


def measure_latency(lab: Lab, sizes: Sizes) -> dict[str, float]:
    root = lab.root("latency")
    app = Spool(root=root)
    proc = lab.worker(root)
    try:
        warm = [app.enqueue("stamp") for _ in range(3)]
        wait_for(lambda: done_path(root, warm[-1]).exists(), 60, 0.01, "the worker to start")
        time.sleep(0.3)  # let it settle into its idle wait
        returned: dict[str, float] = {}
        called: dict[str, float] = {}
        start = time.monotonic()
        for i in range(sizes.latency_tasks):
            pause = start + i * sizes.latency_gap - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            t_call = time.time()
            task_id = app.enqueue("stamp")
            returned[task_id] = time.time()
            called[task_id] = t_call
        last = list(returned)[-1]
        wait_for(lambda: done_path(root, last).exists(), 60, 0.005, "the last task")
        wait_for(lambda: all(done_path(root, i).exists() for i in returned), 60, 0.01, "all tasks")
        round_trips = measure_round_trips(app, sizes)
    finally:
        stop(proc)
    ms_enq, ms_ret, ms_parent, ms_child, ms_call = [], [], [], [], []
    for task_id, task in zip(returned, read_done(root, list(returned)), strict=True):
        handler_start = float(task["result"])
        ms_enq.append((handler_start - task["enqueued_at"]) * 1000)
        ms_ret.append((handler_start - returned[task_id]) * 1000)
        ms_parent.append((task["started_at"] - task["enqueued_at"]) * 1000)
        ms_child.append((handler_start - task["started_at"]) * 1000)
        ms_call.append((returned[task_id] - called[task_id]) * 1000)
    return {
        "lat_enq_p50": pct(ms_enq, 50),
        "lat_enq_p99": pct(ms_enq, 99),
        "lat_ret_p50": pct(ms_ret, 50),
        "lat_ret_p99": pct(ms_ret, 99),
        "lat_parent_p50": pct(ms_parent, 50),
        "lat_child_p50": pct(ms_child, 50),
        "enqueue_call_p50": pct(ms_call, 50),
        "round_trip_p50": pct(round_trips, 50),
        "round_trip_p99": pct(round_trips, 99),
    }


def measure_round_trips(app: Spool, sizes: Sizes) -> list[float]:
    """ms from calling enqueue() to wait() returning the result, one task at a time on an
    idle worker: pick-up, run, and the outcome made durable and published."""
    round_trips = []
    for _ in range(sizes.latency_tasks // 2):
        time.sleep(sizes.latency_gap)
        t_call = time.perf_counter()
        app.wait(app.enqueue("stamp"), timeout=30)
        round_trips.append((time.perf_counter() - t_call) * 1000)
    return round_trips


# ---- 2. drain rate ------------------------------------------------------------------------


def measure_drain(lab: Lab, sizes: Sizes, burst: bool, workers: int = 2) -> dict[str, float]:
    n = sizes.drain_tasks
    root = lab.root("drain-burst" if burst else "drain")
    app = Spool(root=root)
    ids = app.enqueue_many(noop_tasks(n))
    done_dir = queue_dir(root, "done")
    t0 = time.time()
    procs = [lab.worker(root, *(["--burst"] if burst else [])) for _ in range(workers)]
    parent_cpu = child_cpu = 0.0
    try:
        if burst:
            for proc in procs:
                proc.wait(timeout=600)
        else:
            wait_for(lambda: done_path(root, ids[-1]).exists(), 600, 0.02, "the last task")
            wait_for(lambda: count(done_dir) >= n, 600, 0.02, f"{n} done")
            parent_cpu = sum(cpu_seconds(p.pid) for p in procs)
            child_cpu = sum(cpu_seconds(c) for p in procs for c in children(p.pid))
    finally:
        for proc in procs:
            stop(proc)
    tasks = read_done(root, ids)
    last_finish = max(t["finished_at"] for t in tasks)
    first_start = min(t["started_at"] for t in tasks)
    key = "drain_burst" if burst else "drain"
    out = {
        f"{key}_wall": n / (last_finish - t0),
        f"{key}_steady": n / (last_finish - first_start),
        f"{key}_startup": first_start - t0,
    }
    if not burst:
        out["drain_parent_cpu_us"] = parent_cpu / n * 1e6
        out["drain_child_cpu_us"] = child_cpu / n * 1e6
    return out


# ---- 3. enqueue rate ----------------------------------------------------------------------


def measure_enqueue(lab: Lab, sizes: Sizes) -> dict[str, float]:
    app = Spool(root=lab.root("enqueue-one"))
    app.enqueue("noop")  # create the directories first
    t = time.perf_counter()
    for _ in range(sizes.one_by_one):
        app.enqueue("noop")
    one = sizes.one_by_one / (time.perf_counter() - t)

    app = Spool(root=lab.root("enqueue-many"))
    app.enqueue("noop")
    tasks = noop_tasks(sizes.bulk)
    t = time.perf_counter()
    app.enqueue_many(tasks)
    many = sizes.bulk / (time.perf_counter() - t)

    root = lab.root("enqueue-cli")
    Spool(root=root).enqueue("noop")
    jsonl = root.parent / f"{root.name}.jsonl"
    jsonl.write_text('{"task": "noop"}\n' * sizes.cli_lines)
    empty = root.parent / f"{root.name}.empty.jsonl"
    empty.write_text("")
    cli_wall = run_cli_enqueue(root, jsonl)
    empty_wall = run_cli_enqueue(root, empty)
    return {
        "enq_one": one,
        "enq_many": many,
        "enq_cli": sizes.cli_lines / cli_wall,
        "enq_cli_net": sizes.cli_lines / max(cli_wall - empty_wall, 1e-6),
        "enq_cli_startup_ms": empty_wall * 1000,
        "enq_many_over_one": many / one,
        "enq_cli_over_one": (sizes.cli_lines / cli_wall) / one,
    }


def run_cli_enqueue(root: Path, jsonl: Path) -> float:
    t = time.perf_counter()
    subprocess.run(
        spool_command(root, "enqueue", "--from", str(jsonl)),
        cwd=PROJECT_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=bench_env(),
        check=True,
    )
    return time.perf_counter() - t


# ---- 4. claim rate vs backlog -------------------------------------------------------------


WARM_BEYOND = 500  # tasks read past the window's end (the worker claims ahead of its stop)


class BigBacklog:
    """One root holding `size` waiting tasks, topped up again before each use.

    Before each use the files the worker will reach first are read once, so every repetition
    starts, like the first, from a backlog as just written. This machine's page cache lets
    go of files left idle for minutes (100,000 small files: 100% resident after writing, 29%
    three idle minutes later, with most memory free), and a file no longer cached costs a
    disk read at its claim (one worker: 3,519 tasks/s warm, 2,481 after dropping the caches).
    That is the disk's speed, the same for a backlog of 100; the ratio measures the backlog's
    size (see docs/performance.md).
    """

    def __init__(self, lab: Lab, size: int) -> None:
        self.root = lab.root("backlog")
        self.app = Spool(root=self.root)
        self.size = size
        self.fill_seconds = 0.0

    def top_up(self, sizes: Sizes) -> list[str]:
        """Refill to `size`; read the first tasks a window over `sizes` reaches; return the
        ids (from their names) of the waiting tasks, in order."""
        incoming = queue_dir(self.root, "incoming")
        missing = self.size - count(incoming)
        if missing > 0:
            t = time.perf_counter()
            fill(self.app, missing)
            self.fill_seconds += time.perf_counter() - t
        names = sorted(n for n in os.listdir(incoming) if n.endswith(".json"))
        for name in names[: sizes.skip + sizes.window + WARM_BEYOND]:
            (incoming / name).read_bytes()
        return [n.removesuffix(".json").split("_", 2)[2] for n in names]


def window_rate(
    lab: Lab, root: Path, order: Sequence[str], sizes: Sizes, burst: bool, label: str
) -> tuple[float, float]:
    """Run one worker over a waiting queue (in `order`); return (window rate, s to 1st claim).

    A worker too slow to reach the end of the window within `sizes.window_seconds` is stopped
    there, and the rate is taken over what it ran (noted in NOTES).
    """
    done_dir = queue_dir(root, "done")
    before = set(os.listdir(done_dir)) if done_dir.is_dir() else set()
    needed = sizes.skip + sizes.window
    sentinel = order[min(needed + 20, len(order) - 1)]
    t0 = time.time()
    proc = lab.worker(root, *(["--burst"] if burst else []))
    deadline = time.monotonic() + sizes.window_seconds
    try:
        while not (done_path(root, sentinel).exists() or proc.poll() is not None):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        stop(proc)
    new = sorted(set(os.listdir(done_dir)) - before)
    tasks = [json.loads((done_dir / n).read_bytes()) for n in new]
    tasks.sort(key=lambda t: t["started_at"])
    if len(tasks) < 2:
        raise RuntimeError(f"{label}: only {len(tasks)} tasks ran in {sizes.window_seconds} s")
    window = tasks[sizes.skip : needed]
    if len(tasks) < needed:
        window = tasks[sizes.skip :] if len(tasks) >= sizes.skip + 50 else tasks
        NOTES.append(
            f"{label}: the worker ran only {len(tasks):,} tasks in {sizes.window_seconds} s "
            f"(window of {needed:,} not reached); its rate is over {len(window):,} of them"
        )
    return span_rate(window), tasks[0]["started_at"] - t0


def fed_rate(lab: Lab, sizes: Sizes) -> float:
    """One resident worker kept fed: `round_size` more tasks are enqueued (enqueue_many)
    whenever fewer than `round_size` wait, so between one and two rounds wait while it drains;
    the rate is taken as over a big backlog (a window of W tasks after the first S), so both
    figures are continuous drains that pay for the same work."""
    root = lab.root("claim-small")
    app = Spool(root=root)
    incoming = queue_dir(root, "incoming")
    needed = sizes.skip + sizes.window
    proc = lab.worker(root)
    ids: list[str] = []
    try:
        warm = app.enqueue("noop")
        wait_for(lambda: done_path(root, warm).exists(), 60, 0.01, "the worker to start")
        deadline = time.monotonic() + sizes.window_seconds
        while len(ids) < needed + sizes.round_size and time.monotonic() < deadline:
            if count(incoming) < sizes.round_size:
                ids += app.enqueue_many(noop_tasks(sizes.round_size))
            else:
                time.sleep(0.001)
        wait_for(lambda: done_path(root, ids[-1]).exists(), 60, 0.01, "the fed worker")
    finally:
        stop(proc)
    tasks = sorted(read_done(root, ids[:needed]), key=lambda t: t["started_at"])
    return span_rate(tasks[sizes.skip :])


def measure_claims(lab: Lab, sizes: Sizes, big: BigBacklog) -> dict[str, float]:
    out: dict[str, float] = {}
    out["claim_res_small"] = fed_rate(lab, sizes)
    order = big.top_up(sizes)
    out["claim_res_big"], out["claim_res_big_first_s"] = window_rate(
        lab, big.root, order, sizes, burst=False, label="resident worker, big backlog"
    )

    small_root = lab.root("claim-burst-small")
    small_ids = Spool(root=small_root).enqueue_many(noop_tasks(sizes.skip + sizes.window + 100))
    out["claim_burst_small"], _ = window_rate(
        lab, small_root, small_ids, sizes, burst=True, label="--burst worker, small backlog"
    )
    order = big.top_up(sizes)
    out["claim_burst_big"], out["claim_burst_big_first_s"] = window_rate(
        lab, big.root, order, sizes, burst=True, label="--burst worker, big backlog"
    )
    out["claim_res_ratio"] = out["claim_res_big"] / out["claim_res_small"]
    out["claim_burst_ratio"] = out["claim_burst_big"] / out["claim_burst_small"]
    return out


# ---- 5. memory with many delayed tasks ------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def idle_worker(lab: Lab, delayed: int, idle_seconds: float) -> tuple[float, float]:
    """(RSS MiB, CPU % of one core over `idle_seconds`) of a resident worker's parent process,
    idle over a queue holding `delayed` tasks due in an hour, once its RSS has settled (and
    3 s more: its first rescans list a just-written delayed/ in full)."""
    root = lab.root(f"delayed-{delayed}")
    app = Spool(root=root)
    left = delayed
    while left > 0:
        take = min(10_000, left)
        app.enqueue_many([{"task": "noop", "delay": 3600 + i} for i in range(take)])
        left -= take
    proc = lab.worker(root)
    try:
        warm = app.enqueue("noop")
        wait_for(lambda: done_path(root, warm).exists(), 60, 0.01, "the worker to start")
        last, steady = 0, 0
        deadline = time.monotonic() + 60
        while steady < 10 and time.monotonic() < deadline:  # settled: same RSS for 1 s
            time.sleep(0.1)
            now = rss_kib(proc.pid)
            steady = steady + 1 if now == last else 0
            last = now
        time.sleep(3.0)  # past start-up: the first rescans list the fresh delayed/ in full
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(idle_seconds)
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        return rss_kib(proc.pid) / 1024, cpu * 100
    finally:
        stop(proc)


def measure_delayed_memory(lab: Lab, big: int, idle_seconds: float = 5.0) -> dict[str, float]:
    small_rss, small_cpu = idle_worker(lab, 100, idle_seconds)
    big_rss, big_cpu = idle_worker(lab, big, idle_seconds)
    return {
        "rss_small": small_rss,
        "rss_big": big_rss,
        "rss_ratio": big_rss / small_rss,
        "idle_cpu_small": small_cpu,
        "idle_cpu_big": big_cpu,
    }


# ---- running and reporting ----------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    unit: str
    target: str = ""
    check: Callable[[float], bool] | None = None
    digits: int = 0


ROWS = [
    Row(
        "lat_enq_p50",
        "idle pick-up p50, enqueued_at -> handler start",
        "ms",
        "<= 2",
        lambda v: v <= 2,
        2,
    ),
    Row(
        "lat_enq_p99",
        "idle pick-up p99, enqueued_at -> handler start",
        "ms",
        "<= 10",
        lambda v: v <= 10,
        2,
    ),
    Row(
        "lat_ret_p50",
        "idle pick-up p50, enqueue() returned -> handler start",
        "ms",
        "<= 2",
        lambda v: v <= 2,
        2,
    ),
    Row(
        "lat_ret_p99",
        "idle pick-up p99, enqueue() returned -> handler start",
        "ms",
        "<= 10",
        lambda v: v <= 10,
        2,
    ),
    Row(
        "lat_parent_p50", "  of which enqueued_at -> worker sends to handler (p50)", "ms", digits=2
    ),
    Row("lat_child_p50", "  of which worker sends -> handler starts (p50)", "ms", digits=2),
    Row("enqueue_call_p50", "  Spool.enqueue call duration (p50)", "ms", digits=2),
    Row("round_trip_p50", "idle round trip p50, enqueue() -> wait() returned", "ms", digits=2),
    Row("round_trip_p99", "idle round trip p99, enqueue() -> wait() returned", "ms", digits=2),
    Row(
        "drain_wall",
        "drain, 2 resident workers, incl. start-up",
        "tasks/s",
        ">= 4500",
        lambda v: v >= 4500,
    ),
    Row(
        "drain_steady",
        "drain, 2 resident workers, first start -> last finish",
        "tasks/s",
        ">= 4500",
        lambda v: v >= 4500,
    ),
    Row("drain_startup", "  workers' start -> first task started", "s", digits=3),
    Row("drain_parent_cpu_us", "  CPU per task, worker parents (utime+stime)", "us"),
    Row("drain_child_cpu_us", "  CPU per task, handler children", "us"),
    Row("drain_burst_wall", "drain, 2 --burst workers, incl. start-up", "tasks/s"),
    Row("drain_burst_steady", "drain, 2 --burst workers, first start -> last finish", "tasks/s"),
    Row("enq_one", "enqueue one by one, Spool.enqueue (durable each)", "tasks/s"),
    Row("enq_many", "enqueue bulk, Spool.enqueue_many (in-process)", "tasks/s"),
    Row("enq_cli", "enqueue bulk, spool enqueue --from FILE.jsonl (wall)", "tasks/s"),
    Row("enq_cli_net", "  same, net of the command's start-up", "tasks/s"),
    Row("enq_cli_startup_ms", "  spool enqueue --from (empty file), wall", "ms"),
    Row("enq_many_over_one", "bulk (enqueue_many) / one by one", "x", ">= 5", lambda v: v >= 5, 1),
    Row(
        "enq_cli_over_one", "bulk (CLI --from, wall) / one by one", "x", ">= 5", lambda v: v >= 5, 1
    ),
    Row("claim_res_small", "claim rate, resident worker, 100-200 waiting", "tasks/s"),
    Row("claim_res_big", "claim rate, resident worker, backlog ~BIG", "tasks/s"),
    Row("claim_res_ratio", "  ratio big / small (resident)", "x", ">= 0.8", lambda v: v >= 0.8, 2),
    Row("claim_res_big_first_s", "  worker start -> first claim with ~BIG waiting", "s", digits=3),
    Row("claim_burst_small", "claim rate, --burst worker, backlog <= SMALL", "tasks/s"),
    Row("claim_burst_big", "claim rate, --burst worker, backlog ~BIG", "tasks/s"),
    Row("claim_burst_ratio", "  ratio big / small (--burst)", "x", ">= 0.8", lambda v: v >= 0.8, 2),
    Row(
        "claim_burst_big_first_s", "  --burst start -> first claim with ~BIG waiting", "s", digits=3
    ),
]


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)
    loads: list[tuple[str, tuple[float, float, float], tuple[float, float]]] = field(
        default_factory=list
    )

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.samples.setdefault(key, []).append(value)

    def note_load(self, what: str, probe: tuple[float, float]) -> None:
        self.loads.append((what, os.getloadavg(), probe))


def fmt(value: float, digits: int) -> str:
    if digits == 0 and abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{max(digits, 1)}f}" if digits or abs(value) < 100 else f"{value:,.0f}"


def render(results: Results, sizes: Sizes, markdown: bool) -> str:
    lines = []
    head = ("figure", "median", "min-max", "unit", "target", "ok")
    table: list[tuple[str, ...]] = []
    for row in ROWS:
        values = results.samples.get(row.key)
        if not values:
            continue
        med = statistics.median(values)
        spread = f"{fmt(min(values), row.digits)}-{fmt(max(values), row.digits)}"
        if len(values) == 1:
            spread = ""
        ok = "" if row.check is None else ("yes" if row.check(med) else "NO")
        label = row.label.replace("BIG", f"{sizes.big_backlog:,}")
        label = label.replace("SMALL", f"{sizes.skip + sizes.window + 100:,}")
        table.append((label, fmt(med, row.digits), spread, row.unit, row.target, ok))
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(" --- " for _ in head) + "|")
        for cells in table:
            lines.append("| " + " | ".join(c.replace("  ", "&nbsp;&nbsp;") for c in cells) + " |")
    else:
        widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
        aligned = [f"{{:<{widths[0]}}}"] + [f"{{:>{w}}}" for w in widths[1:]]
        for cells in [head, *table]:
            lines.append("  ".join(a.format(c) for a, c in zip(aligned, cells, strict=True)))
    return "\n".join(lines)


def render_loads(results: Results) -> list[str]:
    lines = []
    for what, (a, b, c), (probe, waited) in results.loads:
        line = f"- {what}: load {a:.2f} {b:.2f} {c:.2f}"
        if probe >= 0:
            line += f"; file create p50 {probe:.0f} us"
            line += f" (after waiting {waited:.0f} s)" if waited >= 1 else ""
        lines.append(line)
    return lines


def code_version() -> str:
    """The project's commit, and whether spool/ has uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "spool"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{head}" + (" with uncommitted changes in spool/" if dirty else "")


def write_markdown(
    path: Path,
    results: Results,
    sizes: Sizes,
    quick: bool,
    argv: list[str],
    tmp: Path,
    seconds: float,
    version: str,
) -> None:
    body = [
        *report_header("spool core figures", argv, seconds),
        f"- machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; spool roots under "
        f"{tmp.parent} ({fs_type(str(tmp))})",
        f"- code: {version}",
        f"- repetitions: {sizes.reps} ({'quick' if quick else 'full'}); sizes: {sizes}",
        "",
        render(results, sizes, markdown=True),
        "",
        "Load average (1, 5, 15 min) when each measurement started, and the median time to create",
        "an empty file on this disk just before it (about 10 us normally; hundreds of us for a",
        "while after thousands of files were deleted: full runs wait up to 20 s for it to fall",
        f"under {PROBE_OK_US:.0f} us). Other engineers' test suites share this 2-core machine and",
        "disk, so rates are noisy; the CPU-per-task figures are the steadier ones.",
        "",
        *render_loads(results),
        "",
        *([f"- note: {n}" for n in NOTES] + [""] if NOTES else []),
        "Definitions: see the docstring of bench/core.py.",
        "",
    ]
    path.write_text("\n".join(body))


def run_core(
    quick: bool, out: Path | None, tmp_parent: str | None, keep: bool, argv: list[str]
) -> int:
    sizes = QUICK if quick else FULL
    lab = Lab(tmp_parent, keep)
    results = Results()
    started = time.monotonic()
    version = code_version()
    print(
        f"spool bench core ({'quick' if quick else 'full'}): scratch {lab.base} "
        f"({fs_type(str(lab.base))})",
        file=sys.stderr,
    )
    try:
        big = BigBacklog(lab, sizes.big_backlog)
        for rep in range(sizes.reps):
            steps: list[tuple[str, Callable[[], dict[str, float]]]] = [
                ("latency", lambda: measure_latency(lab, sizes)),
                ("drain", lambda: measure_drain(lab, sizes, burst=False)),
                ("drain --burst", lambda: measure_drain(lab, sizes, burst=True)),
                ("enqueue", lambda: measure_enqueue(lab, sizes)),
                ("claims", lambda: measure_claims(lab, sizes, big)),
            ]
            for name, step in steps:
                probe = lab.create_probe(0.0 if quick else 20.0)
                results.note_load(f"rep {rep + 1} {name}", probe)
                t = time.monotonic()
                values = step()
                results.add(values)
                print(f"  rep {rep + 1} {name}: {time.monotonic() - t:.1f} s", file=sys.stderr)
        results.note_load("end", (-1.0, 0.0))
    finally:
        lab.close()
    seconds = time.monotonic() - started
    print(render(results, sizes, markdown=False))
    print()
    print(f"code: {version}")
    print("load average (1, 5, 15 min) and file-creation probe at each step:")
    print("\n".join(render_loads(results)))
    for note in NOTES:
        print(f"note: {note}")
    print(
        f"(filling the {sizes.big_backlog:,} backlog took {big.fill_seconds:.1f} s; "
        f"total {seconds:.1f} s)"
    )
    if out is None:
        out = BENCH_DIR / ("CORE-quick.md" if quick else "CORE.md")
    write_markdown(out, results, sizes, quick, argv, lab.base, seconds, version)
    print(f"wrote {out}")
    return 0


def report_header(title: str, argv: list[str], seconds: float) -> list[str]:
    """The first lines of a results file: title, the command, when and how long."""
    command = ".venv/bin/python -m bench " + " ".join(argv)
    return [
        f"# {title}",
        "",
        f"Command (from the project directory): `{command}`",
        "",
        f"- when: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; took {seconds:.0f} s",
    ]
