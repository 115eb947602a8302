"""spool side by side with Celery, huey, RQ and the raw limit: `python -m bench compare`.

    python -m bench compare [--quick] [--reps N] [--only a,b] [--out FILE] [--tmp DIR] [--keep]

Systems (all with 2 worker processes):
- spool: `python -m spool worker` x2 (resident), as in bench/core.py.
- celery-fs: Celery on kombu's `filesystem://` transport; 2 separate `--pool solo` workers
  (kombu's defaults, so its virtual transport polls every 1 s); results ignored.
- huey-file / huey-sqlite: one `huey_consumer -w 2 -k process` (2 worker processes) on
  FileStorage / SqliteStorage, polling with `-d 0.01 -m 0.1` (10 ms, backing off to 100 ms
  when idle; huey's default is 0.1 s backing off to 10 s); results off.
- rq-simple / rq-fork: `rq worker` x2 with `SimpleWorker` / the default forking `Worker`, on a
  redis-server this harness starts on a free 127.0.0.1 port (no persistence: `--save ""
  --appendonly no`) and kills at the end.
- raw: a Python loop (bench/raw.py): producer write+fsync+rename+fsync-dir of ~120-byte files
  (the size of a spool task file); 2 competing consumer processes that rename-claim, read,
  parse and rename-finish; and the same 2 doing every file step spool takes per task and
  nothing else (`drain_floor`: hide, stage in tmp/, one syncfs per 50 ms, publish, unlink);
  and those with each task run in a handler process (`drain_isolated`: 8 tasks sent in one
  line of JSON, a line back per task).

Workloads (the same for all; repeated, median and min-max; smaller with --quick):
1. enqueue N no-op tasks one by one from one producer (this process), after one warm-up
   enqueue; and in bulk where the system has it (spool `enqueue_many`, RQ `enqueue_many`).
2. drain N queued no-op tasks: tasks are queued first, then the 2 workers start. "wall" counts
   from spawning the workers (interpreter and framework start-up included) to the last
   handler start; "steady" from the first handler start to the last one (for spool, the
   done files' first `started_at` to last `finished_at`, as in bench/core.py).
3. idle pick-up latency: resident workers, 3 warm-up tasks, then tasks enqueued 20 ms apart;
   latency = handler start (time.time() taken in the handler) minus the moment the producer's
   enqueue call returned. spool's `stamp` handler returns it (it lands in the done file); the
   peers' handlers append `tag time pid` to a per-process file (bench/peer_tasks).
4. 2,000 tasks that each sleep 5 ms, queued first, 2 workers: from the first handler start to
   the last finish, and that over the ideal (2,000 x 5 ms / 2 = 5.0 s).
5. scale (spool against itself): claim rate of one resident worker kept fed with 100-200 tasks
   waiting and with 100,000 waiting (bench/core.py's claim measurements); RSS and CPU
   of an idle resident worker over a queue of 100 and of 100,000 tasks delayed by an hour.
A peer's task that never ran (no mark within a stall timeout) is counted as lost.
Repetitions alternate the order of the systems, so none always runs first on a fresh disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import core, peer_tasks, raw
from bench.core import Lab, pct
from spool import Spool

BENCH_DIR = core.BENCH_DIR
PROJECT_DIR = core.PROJECT_DIR
BIN = Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class Sizes:
    reps: int
    enqueue: int
    bulk: int
    drain: int
    drain_fork: int  # RQ's forking worker runs ~60 tasks/s: a smaller drain
    latency: int
    gap: float
    stall: float  # seconds without progress before the rest counts as lost
    disk_wait: float
    sleepy: int  # tasks of 5 ms each
    big: int  # waiting / delayed tasks of the scale workload


FULL = Sizes(3, 5000, 5000, 5000, 1000, 200, 0.020, 20.0, 20.0, 2000, 100_000)
QUICK = Sizes(1, 300, 1000, 500, 150, 40, 0.020, 8.0, 0.0, 200, 5_000)
SMOKE = Sizes(1, 30, 100, 100, 50, 10, 0.020, 8.0, 0.0, 20, 1_500)  # CI: spool and raw, ~10 s
SLEEP = 0.005  # seconds each sleep5 task waits

SYSTEMS = ["spool", "raw", "celery-fs", "huey-file", "huey-sqlite", "rq-simple", "rq-fork"]
METRICS = [
    # key, label, unit, higher is better
    ("enq_one", "enqueue one by one", "tasks/s", True),
    ("enq_bulk", "enqueue bulk", "tasks/s", True),
    ("drain_wall", "drain, 2 workers, incl. start-up", "tasks/s", True),
    ("drain_steady", "drain, 2 workers, first -> last start", "tasks/s", True),
    ("drain_floor", "  same, spool's file steps only (raw: its floor)", "tasks/s", True),
    ("drain_isolated", "  same, plus a handler process (raw: floor + isolation)", "tasks/s", True),
    ("lat_p50", "idle pick-up p50 (enqueue returned -> handler start)", "ms", False),
    ("lat_p99", "idle pick-up p99", "ms", False),
    ("sleepy_s", "5 ms tasks, 2 workers, first start -> last finish", "s", False),
    ("sleepy_x", "  same, / ideal (n x 5 ms / 2)", "x", False),
    ("claim_small", "claim rate, 1 worker, 100-200 waiting", "tasks/s", True),
    ("claim_big", "claim rate, 1 worker, 100,000 waiting", "tasks/s", True),
    ("claim_ratio", "  ratio 100,000 / 100 waiting", "x", True),
    ("rss_small", "worker RSS, 100 delayed tasks", "MiB", False),
    ("rss_big", "worker RSS, 100,000 delayed tasks", "MiB", False),
    ("rss_ratio", "  ratio 100,000 / 100 delayed", "x", False),
    ("idle_cpu_small", "idle worker CPU, 100 delayed", "%", False),
    ("idle_cpu_big", "idle worker CPU, 100,000 delayed", "%", False),
    ("lost", "tasks lost (drain + latency + 5 ms tasks)", "tasks", False),
]
WORKLOADS = ("enqueue", "drain", "latency", "sleepy", "scale")
NOTES: list[str] = []


# ---- processes ----------------------------------------------------------------------------


def peer_env(peer_dir: Path, mark_dir: Path, **extra: str) -> dict[str, str]:
    env = core.bench_env()
    env.update(BENCH_PEER_DIR=str(peer_dir), BENCH_MARK_DIR=str(mark_dir), **extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Procs:
    """Worker processes of one measurement, each in its own session (killed as a group)."""

    def __init__(self, lab: Lab, label: str) -> None:
        self.lab = lab
        self.label = label
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.lab.base / f"{self.label}.w{len(self.procs)}.log", "ab")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(
                cmd,
                cwd=PROJECT_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (forked children)
            proc.wait()


def wait_marks(mark_dir: Path, target: int, stall: float) -> int:
    """Wait until `target` marks exist or none came for `stall` s; return how many exist."""
    last_n, last_t = -1, time.monotonic()
    while True:
        n = peer_tasks.count_marks(str(mark_dir))
        if n >= target:
            return n
        now = time.monotonic()
        if n != last_n:
            last_n, last_t = n, now
        elif now - last_t > stall:
            return n
        time.sleep(0.01)


class Redis:
    """A redis-server on a free 127.0.0.1 port, data dir under the lab; `stop()` kills it."""

    def __init__(self, lab: Lab) -> None:
        self.dir = lab.root("redis")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115
        with log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.dir),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "yes",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.05)
        self.client = client

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# ---- the systems --------------------------------------------------------------------------


class System:
    name = ""
    has_bulk = False
    has_latency = True
    has_sleepy = True
    has_scale = False  # workload 5 is spool's own scaling (ratios of spool to itself)

    def __init__(self, lab: Lab, sizes: Sizes) -> None:
        self.lab = lab
        self.sizes = sizes

    # a producer: returns (enqueue one, enqueue n in bulk or None)
    def producer(self, where: Path) -> tuple[Callable[[str, str], None], Any]:
        raise NotImplementedError

    def start_workers(self, procs: Procs, where: Path, mark_dir: Path) -> None:
        raise NotImplementedError

    def drain_size(self) -> int:
        return self.sizes.drain

    def dirs(self, what: str) -> tuple[Path, Path]:
        where = self.lab.root(f"{self.name}-{what}")
        marks = where / "marks"
        marks.mkdir()
        return where, marks

    def enqueue(self) -> dict[str, float]:
        where, _ = self.dirs("enqueue")
        one, bulk = self.producer(where)
        one("noop", "warm")
        n = self.sizes.enqueue
        t = time.perf_counter()
        for _ in range(n):
            one("noop", "-")
        out = {"enq_one": n / (time.perf_counter() - t)}
        if bulk is not None:
            where, _ = self.dirs("bulk")
            one, bulk = self.producer(where)
            one("noop", "warm")
            t = time.perf_counter()
            bulk(self.sizes.bulk)
            out["enq_bulk"] = self.sizes.bulk / (time.perf_counter() - t)
        return out

    def drain(self) -> dict[str, float]:
        n = self.drain_size()
        where, marks = self.dirs("drain")
        one, bulk = self.producer(where)
        if bulk is not None:
            bulk(n)
        else:
            for _ in range(n):
                one("noop", "-")
        procs = Procs(self.lab, f"{self.name}-drain")
        t0 = time.time()
        try:
            self.start_workers(procs, where, marks)
            got = wait_marks(marks, n, self.sizes.stall)
        finally:
            procs.stop()
        times = [t for _, t in peer_tasks.read_marks(str(marks))]
        if not times:
            return {"lost": n}
        first, last = min(times), max(times)
        return {
            "drain_wall": got / (last - t0),
            "drain_steady": got / (last - first) if last > first else float("nan"),
            "lost": max(0, n - got),
        }

    def sleepy_size(self) -> int:
        return min(self.sizes.sleepy, self.drain_size())

    def sleepy(self) -> dict[str, float]:
        n = self.sleepy_size()
        where, marks = self.dirs("sleepy")
        one, _ = self.producer(where)
        for _ in range(n):
            one("sleep5", "-")
        procs = Procs(self.lab, f"{self.name}-sleepy")
        try:
            self.start_workers(procs, where, marks)
            got = wait_marks(marks, n, self.sizes.stall)
        finally:
            procs.stop()
        times = [t for _, t in peer_tasks.read_marks(str(marks))]
        if not times:
            return {"lost": n}
        seconds = max(times) + SLEEP - min(times)
        return {"sleepy_s": seconds, "sleepy_x": seconds / (n * SLEEP / 2), "lost": n - got}

    def scale(self) -> dict[str, float]:
        raise NotImplementedError

    def latency(self) -> dict[str, float]:
        where, marks = self.dirs("latency")
        one, _ = self.producer(where)
        procs = Procs(self.lab, f"{self.name}-latency")
        returned: dict[str, float] = {}
        try:
            self.start_workers(procs, where, marks)
            for i in range(3):
                one("stamp", f"w{i}")
            if wait_marks(marks, 3, 60.0) < 3:
                raise RuntimeError(f"{self.name}: workers did not run the warm-up tasks")
            time.sleep(0.3)
            start = time.monotonic()
            for i in range(self.sizes.latency):
                pause = start + i * self.sizes.gap - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                one("stamp", str(i))
                returned[str(i)] = time.time()
            wait_marks(marks, 3 + len(returned), self.sizes.stall)
        finally:
            procs.stop()
        starts = dict(peer_tasks.read_marks(str(marks)))
        ms = [(starts[k] - v) * 1000 for k, v in returned.items() if k in starts]
        lost = len(returned) - len(ms)
        if not ms:
            return {"lost": lost}
        return {"lat_p50": pct(ms, 50), "lat_p99": pct(ms, 99), "lost": lost}


class SpoolSystem(System):
    name = "spool"
    has_bulk = True
    has_scale = True

    backlog: core.BigBacklog | None = None

    def core_sizes(self) -> core.Sizes:
        return dataclasses.replace(
            core.QUICK,
            latency_tasks=self.sizes.latency,
            latency_gap=self.sizes.gap,
            drain_tasks=self.sizes.drain,
        )

    def enqueue(self) -> dict[str, float]:
        from spool import Spool

        app = Spool(root=self.lab.root("spool-enqueue"))
        app.enqueue("noop")
        n = self.sizes.enqueue
        t = time.perf_counter()
        for _ in range(n):
            app.enqueue("noop")
        one = n / (time.perf_counter() - t)
        app = Spool(root=self.lab.root("spool-bulk"))
        app.enqueue("noop")
        tasks = core.noop_tasks(self.sizes.bulk)
        t = time.perf_counter()
        app.enqueue_many(tasks)
        return {"enq_one": one, "enq_bulk": self.sizes.bulk / (time.perf_counter() - t)}

    def drain(self) -> dict[str, float]:
        got = core.measure_drain(self.lab, self.core_sizes(), burst=False)
        return {"drain_wall": got["drain_wall"], "drain_steady": got["drain_steady"], "lost": 0}

    def latency(self) -> dict[str, float]:
        got = core.measure_latency(self.lab, self.core_sizes())
        return {"lat_p50": got["lat_ret_p50"], "lat_p99": got["lat_ret_p99"], "lost": 0}

    def sleepy(self) -> dict[str, float]:
        n = self.sizes.sleepy
        root = self.lab.root("spool-sleepy")
        ids = Spool(root=root).enqueue_many([{"task": "sleep5"} for _ in range(n)])
        procs = [self.lab.worker(root) for _ in range(2)]
        try:
            core.wait_for(
                lambda: core.count(core.queue_dir(root, "done")) >= n, 600, 0.02, "5 ms tasks"
            )
        finally:
            for proc in procs:
                core.stop(proc)
        tasks = core.read_done(root, ids)
        seconds = max(t["finished_at"] for t in tasks) - min(t["started_at"] for t in tasks)
        return {"sleepy_s": seconds, "sleepy_x": seconds / (n * SLEEP / 2), "lost": 0}

    def scale(self) -> dict[str, float]:
        sizes = core.FULL if self.sizes is FULL else core.QUICK
        if self.sizes is SMOKE:
            sizes = dataclasses.replace(sizes, skip=50, window=400, round_size=50)
        sizes = dataclasses.replace(sizes, big_backlog=self.sizes.big)
        if self.backlog is None:
            self.backlog = core.BigBacklog(self.lab, sizes.big_backlog)
        small = core.fed_rate(self.lab, sizes)
        order = self.backlog.top_up(sizes)
        big, _ = core.window_rate(
            self.lab, self.backlog.root, order, sizes, burst=False, label="big backlog"
        )
        out = {"claim_small": small, "claim_big": big, "claim_ratio": big / small}
        out.update(core.measure_delayed_memory(self.lab, self.sizes.big))
        return out


class RawSystem(System):
    name = "raw"
    has_latency = False
    has_sleepy = False

    def enqueue(self) -> dict[str, float]:
        n = self.sizes.enqueue
        root = self.lab.root("raw-enqueue")
        raw.produce(root, 1)
        out = {"enq_one": n / raw.produce(root, n, durable=True)}
        root = self.lab.root("raw-enqueue-nofsync")
        raw.produce(root, 1, durable=False)
        out["enq_nofsync"] = n / raw.produce(root, n, durable=False)
        return out

    def drain(self) -> dict[str, float]:
        out = self.consumers("consume")
        out["drain_floor"] = self.consumers("floor")["drain_steady"]
        out["drain_isolated"] = self.consumers("isolated")["drain_steady"]
        return out

    def consumers(self, loop: str) -> dict[str, float]:
        """Drain with 2 processes running bench.raw's `loop` (consume, or the protocol floor)."""
        n = self.sizes.drain
        root = self.lab.root(f"raw-drain-{loop}")
        raw.produce(root, n, durable=False)
        cmd = [sys.executable, "-m", "bench.raw", loop, str(root), str(n)]
        t0 = time.time()
        procs = [
            subprocess.Popen(cmd, cwd=PROJECT_DIR, stdout=subprocess.PIPE, env=core.bench_env())
            for _ in range(2)
        ]
        outs = []
        try:
            for proc in procs:
                out, _ = proc.communicate(timeout=300)
                outs.append(out.split())
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        firsts = [float(o[0]) for o in outs if float(o[0]) > 0]
        last = max(float(o[1]) for o in outs)
        handled = sum(int(o[2]) for o in outs)
        return {
            "drain_wall": handled / (last - t0),
            "drain_steady": handled / (last - min(firsts)),
            "lost": n - handled,
        }


class CelerySystem(System):
    name = "celery-fs"

    def producer(self, where: Path) -> tuple[Callable[[str, str], None], Any]:
        from bench.peer_tasks.celery_app import make_app

        _, tasks = make_app(str(where / "broker"))

        def one(task: str, tag: str) -> None:
            tasks[task].delay(tag)

        return one, None

    def start_workers(self, procs: Procs, where: Path, mark_dir: Path) -> None:
        env = peer_env(where / "broker", mark_dir)
        for i in range(2):
            procs.start(
                [
                    str(BIN / "celery"),
                    "-A",
                    "bench.peer_tasks.celery_app",
                    "worker",
                    "--pool",
                    "solo",
                    "-n",
                    f"w{i}@bench",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel",
                    "WARNING",
                ],
                env,
            )


class HueySystem(System):
    def __init__(self, lab: Lab, sizes: Sizes, kind: str) -> None:
        super().__init__(lab, sizes)
        self.kind = kind
        self.name = f"huey-{kind}"

    def producer(self, where: Path) -> tuple[Callable[[str, str], None], Any]:
        from bench.peer_tasks.huey_app import make_huey

        _, tasks = make_huey(self.kind, str(where / "store"))

        def one(task: str, tag: str) -> None:
            tasks[task](tag)

        return one, None

    def start_workers(self, procs: Procs, where: Path, mark_dir: Path) -> None:
        env = peer_env(where / "store", mark_dir, BENCH_HUEY_KIND=self.kind)
        cmd = [str(BIN / "huey_consumer"), "bench.peer_tasks.huey_app.huey"]
        procs.start([*cmd, "-w", "2", "-k", "process", "-d", "0.01", "-m", "0.1", "-q"], env)


class RQSystem(System):
    has_bulk = True

    def __init__(self, lab: Lab, sizes: Sizes, redis: Redis, fork: bool) -> None:
        super().__init__(lab, sizes)
        self.redis = redis
        self.fork = fork
        self.name = "rq-fork" if fork else "rq-simple"

    def drain_size(self) -> int:
        return self.sizes.drain_fork if self.fork else self.sizes.drain

    def producer(self, where: Path) -> tuple[Callable[[str, str], None], Any]:
        from rq import Queue

        queue = Queue(where.name, connection=self.redis.client)
        funcs = {"noop": peer_tasks.noop, "stamp": peer_tasks.stamp, "sleep5": peer_tasks.sleep5}

        def one(task: str, tag: str) -> None:
            queue.enqueue(funcs[task], tag)

        def bulk(n: int) -> None:
            for start in range(0, n, 1000):
                take = min(1000, n - start)
                queue.enqueue_many(
                    [Queue.prepare_data(peer_tasks.noop, ("-",)) for _ in range(take)]
                )

        return one, bulk

    def start_workers(self, procs: Procs, where: Path, mark_dir: Path) -> None:
        env = peer_env(where, mark_dir)
        klass = "rq.worker.Worker" if self.fork else "rq.worker.SimpleWorker"
        for _ in range(2):
            procs.start(
                [str(BIN / "rq"), "worker", "-w", klass, "-u", self.redis.url, "-q", where.name],
                env,
            )


# ---- running and reporting ----------------------------------------------------------------


def versions() -> list[str]:
    out = [f"Python {sys.version.split()[0]} on {platform.platform()}, {os.cpu_count()} CPUs"]
    for dist in ("spool-queue", "celery", "kombu", "huey", "rq", "redis", "watchdog"):
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist} not installed")
    try:
        server = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        out.append(server)
    except (OSError, subprocess.CalledProcessError):
        out.append("redis-server not installed")
    return out


@contextlib.contextmanager
def redis_server(lab: Lab) -> Iterator[Redis]:
    server = Redis(lab)
    try:
        yield server
    finally:
        server.stop()


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt(value: float, unit: str) -> str:
    if value != value:
        return "nan"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    if unit == "tasks":
        return f"{value:.0f}"
    if unit in ("x", "s", "MiB", "%"):
        return f"{value:.2f}"
    return f"{value:,.0f}"


def cell(samples: dict[tuple[str, str], list[float]], system: str, key: str, unit: str) -> str:
    values = samples.get((system, key))
    if not values:
        return "-"
    text = fmt(median(values), unit)
    if len(values) > 1 and key != "lost":
        text += f" ({fmt(min(values), unit)}-{fmt(max(values), unit)})"
    if key == "lost" and len(values) > 1:
        text = f"{sum(values):.0f} in {len(values)} reps"
    return text


def tables(samples: dict[tuple[str, str], list[float]], systems: list[str]) -> list[list[str]]:
    """Rows of the figures table, then a blank, then the ratios table (first row a header)."""
    head = ["figure", "unit", *systems]
    rows = [head]
    for key, label, unit, _ in METRICS:
        rows.append([label, unit, *(cell(samples, s, key, unit) for s in systems)])
    if ("raw", "enq_nofsync") in samples:
        rows.append(
            ["enqueue one by one, no fsync (raw only)", "tasks/s"]
            + [cell(samples, s, "enq_nofsync", "tasks/s") for s in systems]
        )
    peers = [s for s in systems if s != "spool"]
    ratio_rows = [["spool / peer (median over median)", "better if", *peers]]
    for key, label, _, higher in METRICS:
        if key == "lost" or not samples.get(("spool", key)):
            continue
        if not any(samples.get((peer, key)) for peer in peers):
            continue  # spool's own scaling figures: no peer to compare with
        mine = median(samples[("spool", key)])
        line = [label, "> 1" if higher else "< 1"]
        for peer in peers:
            theirs = samples.get((peer, key))
            line.append(ratio(mine, median(theirs)) if theirs else "-")
        ratio_rows.append(line)
    return [*rows, [], *ratio_rows, [], *target_rows(samples)]


TARGETS = [  # issue 20's (issue 6's bounds where 20 is silent)
    # label, spool key, other system (None: a bound on spool's own figure), op, bound
    ("durable enqueue one by one / raw loop", "enq_one", ("raw", "enq_one"), ">=", 0.85),
    ("bulk enqueue / one by one", "enq_bulk", ("spool", "enq_one"), ">=", 5.0),
    ("drain (steady) / huey-sqlite", "drain_steady", ("huey-sqlite", "drain_steady"), ">=", 3.0),
    ("drain (steady) / Celery-fs", "drain_steady", ("celery-fs", "drain_steady"), ">=", 20.0),
    ("drain (steady) / raw consumers", "drain_steady", ("raw", "drain_steady"), ">=", 0.3),
    ("idle pick-up p50 / RQ SimpleWorker", "lat_p50", ("rq-simple", "lat_p50"), "<=", 0.5),
    ("idle pick-up p50, ms", "lat_p50", None, "<=", 1.0),
    ("idle pick-up p99, ms", "lat_p99", None, "<=", 2.0),
    ("5 ms tasks / ideal", "sleepy_x", None, "<=", 1.08),
    ("claim rate 100,000 / 100 waiting", "claim_ratio", None, ">=", 0.9),
    ("worker RSS 100,000 / 100 delayed", "rss_ratio", None, "<=", 1.10),
    ("idle worker CPU, 100,000 delayed, %", "idle_cpu_big", None, "<=", 1.0),
]


def target_rows(samples: dict[tuple[str, str], list[float]]) -> list[list[str]]:
    rows = [["target (issues 6, 20)", "bound", "measured", "met"]]
    for label, key, other, op, bound in TARGETS:
        mine = samples.get(("spool", key))
        theirs = samples.get(other) if other else [1.0]
        if not mine or not theirs:
            rows.append([label, f"{op} {bound:g}", "-", "-"])
            continue
        value = median(mine) / median(theirs)
        met = value >= bound if op == ">=" else value <= bound
        rows.append([label, f"{op} {bound:g}", f"{value:.2f}", "yes" if met else "NO"])
    return rows


def ratio(mine: float, theirs: float) -> str:
    value = mine / theirs if theirs else float("nan")
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.4f}x"


def render(rows: list[list[str]], markdown: bool) -> str:
    blocks: list[list[list[str]]] = [[]]
    for row in rows:
        if row:
            blocks[-1].append(row)
        else:
            blocks.append([])
    out = []
    for block in blocks:
        if markdown:
            out.append("| " + " | ".join(block[0]) + " |")
            out.append("|" + "|".join(" --- " for _ in block[0]) + "|")
            out.extend("| " + " | ".join(r) + " |" for r in block[1:])
        else:
            widths = [max(len(r[i]) for r in block) for i in range(len(block[0]))]
            for r in block:
                cells = [r[0].ljust(widths[0])] + [
                    c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
                ]
                out.append("  ".join(cells))
        out.append("")
    return "\n".join(out)


def run_compare(args: Any, argv: list[str]) -> int:
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.reps:
        sizes = dataclasses.replace(sizes, reps=args.reps)
    wanted = args.only.split(",") if args.only else ["spool", "raw"] if args.smoke else SYSTEMS
    systems = [s for s in SYSTEMS if s in wanted]
    lab = Lab(args.tmp, args.keep)
    samples: dict[tuple[str, str], list[float]] = {}
    loads: list[str] = []
    started = time.monotonic()
    print(
        f"spool bench compare ({'smoke' if args.smoke else 'quick' if args.quick else 'full'})"
        f": scratch {lab.base}",
        file=sys.stderr,
    )
    try:
        with contextlib.ExitStack() as stack:
            needs_redis = any(s.startswith("rq-") for s in systems)
            server = stack.enter_context(redis_server(lab)) if needs_redis else None
            impl: dict[str, System] = {}
            for name in systems:
                if name == "spool":
                    impl[name] = SpoolSystem(lab, sizes)
                elif name == "raw":
                    impl[name] = RawSystem(lab, sizes)
                elif name == "celery-fs":
                    impl[name] = CelerySystem(lab, sizes)
                elif name.startswith("huey-"):
                    impl[name] = HueySystem(lab, sizes, name.split("-")[1])
                else:
                    assert server is not None
                    impl[name] = RQSystem(lab, sizes, server, fork=name == "rq-fork")
            for rep in range(sizes.reps):
                # every other repetition in reverse order, so no system always goes first
                order = systems if rep % 2 == 0 else systems[::-1]
                for workload in WORKLOADS:
                    for name in order:
                        system = impl[name]
                        if workload == "enqueue" and name == "rq-fork":
                            continue  # the same producer as rq-simple
                        if not getattr(system, f"has_{workload}", True):
                            continue
                        probe, waited = lab.create_probe(sizes.disk_wait)
                        a, b, c = os.getloadavg()
                        loads.append(
                            f"rep {rep + 1} {workload} {name}: load {a:.2f} {b:.2f} {c:.2f}; "
                            f"file create p50 {probe:.0f} us"
                            + (f" (waited {waited:.0f} s)" if waited >= 1 else "")
                        )
                        t = time.monotonic()
                        try:
                            values = getattr(system, workload)()
                        except Exception as exc:  # a peer failing must not stop the others
                            NOTES.append(f"rep {rep + 1} {workload} {name} failed: {exc!r}")
                            print(f"  {NOTES[-1]}", file=sys.stderr)
                            continue
                        for key, value in values.items():
                            if key == "lost" and workload == "drain":
                                samples.setdefault((name, "lost"), []).append(value)
                            elif key == "lost":
                                samples[(name, "lost")][-1] += value
                            else:
                                samples.setdefault((name, key), []).append(value)
                        shown = ", ".join(f"{k} {v:,.2f}" for k, v in values.items())
                        print(
                            f"  rep {rep + 1} {workload} {name}: {shown} "
                            f"({time.monotonic() - t:.1f} s)",
                            file=sys.stderr,
                        )
    finally:
        lab.close()
    seconds = time.monotonic() - started
    a, b, c = os.getloadavg()
    loads.append(f"end: load {a:.2f} {b:.2f} {c:.2f}")
    rows = tables(samples, systems)
    print(render(rows, markdown=False))
    for note in NOTES:
        print(f"note: {note}")
    print(f"total {seconds:.0f} s")
    out = args.out or BENCH_DIR / (
        "RESULTS-smoke.md" if args.smoke else "RESULTS-quick.md" if args.quick else "RESULTS.md"
    )
    write_markdown(out, rows, sizes, argv, seconds, loads)
    print(f"wrote {out}")
    return 0


def write_markdown(
    path: Path, rows: list[list[str]], sizes: Sizes, argv: list[str], seconds: float, loads: list
) -> None:
    body = [
        *core.report_header(
            "spool side by side with Celery, huey, RQ and the raw limit", argv, seconds
        ),
        f"- code: {core.code_version()}",
        *[f"- {v}" for v in versions()],
        f"- sizes: {sizes}",
        "",
        "Medians (min-max over the repetitions) on this 2-core machine, shared with other",
        "work; then each spool figure as a ratio to the same figure of each peer, measured in",
        "the same run. Definitions, worker setups and what each handler does: the docstring of",
        "bench/peers.py. For latency a ratio < 1 means spool is faster.",
        "",
        render(rows, markdown=True),
        *[f"- note: {n}" for n in NOTES],
        "",
        "Load average (1, 5, 15 min) and the file-creation probe before each measurement:",
        "",
        *[f"- {line}" for line in loads],
        "",
    ]
    path.write_text("\n".join(body))
