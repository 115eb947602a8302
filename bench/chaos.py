"""Chaos soak: `python -m bench.chaos [--tasks N] [--seconds S] [--worker-kills K] ...` (as root).

Producers enqueue N tasks in every way spool offers (`spool enqueue`, `spool enqueue --from
FILE.jsonl`, `app.enqueue`, `app.enqueue_many`, files written under a dot-name and renamed into
incoming/) over S seconds, while workers run under a real supervisord and the soak strikes at
random moments:

- SIGKILL of a random live worker (Supervisor starts a new one);
- SIGKILL of supervisord itself: its workers are orphaned and go on working (their stdout is a
  pipe nobody reads any more); the soak starts supervisord again a moment later, and SIGKILLs the
  orphans a few seconds after that (a worker kill of its own kind);
- SIGKILL of a worker's handler process (`handler_pid` in its info file under .workers/);
- a full disk: the root is a small tmpfs that the soak mounts (as root), filled by a filler file
  for a few seconds in the middle of the run, then freed.

Each run of the handler (bench.tasks.chaos_effect) appends `<tag> <pid> <time>` to a log
outside the spool; a tag names one task (the task's id is known from its producer). Once the
chaos is over the workers drain the queue (with a deadline), and the soak checks the promises:

- every accepted task is in done/ exactly once, under the id its producer was given;
- nothing in failed/, nothing left in incoming/, delayed/ or processing/;
- every task's handler ran at least once, and more than once only for attempts that were really
  lost: a `WorkerLost` (its worker or its handler process died while it ran) or `Timeout` entry
  in the task's history;
- an enqueue that reported an error enqueued nothing; a CLI error is one line, no traceback;
- no worker exits on its own (Supervisor's log says why each one ended).

It prints the figures and exits 0 when every promise held, 1 when one broke (with the
evidence: task ids, history, side effects, the workers' log lines naming the task).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spool import Spool
from spool.config import load_settings
from spool.deploy.foreground import supervisor_rpc
from spool.deploy.supervisor import WorkerProgram, command_value, render_conf, value
from spool.layout import QueueDirs

PROJECT_DIR = Path(__file__).resolve().parent.parent
QUEUE = "default"
TASK = "chaos_effect"
EFFECTS_ENV = "SPOOL_CHAOS_EFFECTS"
PROGRAM = "spool-worker"
TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_RETRIES = 3  # spool's default: the "would have failed" figure
LOST_TYPES = ("WorkerLost", "Timeout")  # attempts that may have run the handler, then were lost
# how the tasks are enqueued: share of the tasks, and tasks per call (batches: a random size)
SHARES = {"cli": 0.03, "cli-from": 0.17, "api": 0.2, "api-many": 0.3, "drop": 0.3}
BATCH_SIZES = {"cli-from": (20, 300), "api-many": (20, 400)}
SHELL_KINDS = ("cli", "cli-from")  # run by their own producer thread (they wait on a process)

CONFIG = """\
# written by python -m bench.chaos: workers of the soak
tasks = ["bench.tasks"]

[defaults]
max_retries = {max_retries}
timeout = {timeout:g}
retry_backoff = 0.2
retry_backoff_max = 2.0

[workers]
rescan_seconds = 1.0
recover_seconds = 1.0
"""


@dataclass(frozen=True)
class Plan:
    tasks: int
    seconds: float
    workers: int
    worker_kills: int
    supervisord_kills: int
    handler_kills: int
    full_disk_seconds: float
    tmpfs_size: str
    max_retries: int
    drain_seconds: float
    seed: int


# ---- the scratch directory and its tmpfs ---------------------------------------------------


@dataclass
class Scratch:
    """Everything of one run under a short directory in /tmp (the control socket's path must
    stay under 108 bytes); the spool root is a tmpfs mounted there when the disk gets full."""

    base: Path
    mounted: bool = False

    @property
    def root(self) -> Path:
        return self.base / "spool"

    @property
    def var(self) -> Path:
        return self.base / "var"

    @property
    def config(self) -> Path:
        return self.base / "spool.toml"

    @property
    def effects(self) -> Path:
        return self.base / "effects.log"

    @property
    def feeds(self) -> Path:
        return self.base / "feeds"


def make_scratch(plan: Plan, tmpfs: bool) -> Scratch:
    scratch = Scratch(Path(tempfile.mkdtemp(prefix="spool-chaos-", dir="/tmp")))
    for path in (scratch.root, scratch.var / "log", scratch.feeds):
        path.mkdir(parents=True)
    if tmpfs:
        size = f"size={plan.tmpfs_size}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(scratch.root)], check=True)
        scratch.mounted = True
    scratch.config.write_text(CONFIG.format(max_retries=plan.max_retries, timeout=TIMEOUT_SECONDS))
    QueueDirs(scratch.root, QUEUE).create()
    return scratch


def remove_scratch(scratch: Scratch, keep: bool) -> None:
    if scratch.mounted:
        if keep:  # the tmpfs goes: keep a copy of the spool beside it
            shutil.copytree(scratch.root, scratch.base / "spool-copy", symlinks=True)
        if subprocess.run(["umount", str(scratch.root)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(scratch.root)], check=False)
        scratch.mounted = False
    if keep:
        print(f"kept {scratch.base}")
    else:
        shutil.rmtree(scratch.base, ignore_errors=True)


# ---- processes -----------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def command_line(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def is_worker(pid: int) -> bool:
    cmdline = command_line(pid)
    return is_running(pid) and b"spool" in cmdline and b"worker" in cmdline


def children_of(parent: int) -> list[int]:
    """Live children of `parent` (a /proc scan)."""
    pids = (int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    return [pid for pid in pids if is_child_of(pid, parent)]


def workers_on(root: Path) -> list[int]:
    """Live worker processes whose command line names `root`, whoever their parent is."""
    pids = (int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    return [pid for pid in pids if is_worker(pid) and str(root).encode() in command_line(pid)]


def is_child_of(pid: int, parent: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z" and int(stat[1]) == parent


@dataclass(frozen=True)
class LiveWorker:
    worker_id: str
    pid: int
    handler_pid: int | None


def live_workers(root: Path) -> list[LiveWorker]:
    """The workers whose info file under .workers/ names a live worker process."""
    found = []
    for path in sorted((root / ".workers").glob("*.json")):
        try:
            info = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        pid = info.get("pid")
        if isinstance(pid, int) and is_worker(pid):
            handler = info.get("handler_pid")
            handler = handler if isinstance(handler, int) and is_child_of(handler, pid) else None
            found.append(LiveWorker(path.stem, pid, handler))
    return found


def kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


# ---- supervisord ---------------------------------------------------------------------------


def render_supervisord_conf(scratch: Scratch, workers: int) -> str:
    """Supervisor's daemon sections and the workers only (no scheduler, web or notify)."""
    var = value(str(scratch.var))
    root, config = str(scratch.root), str(scratch.config)
    program = WorkerProgram(
        command=command_value(
            sys.executable, "-m", "spool", "--root", root, "--config", config, "worker"
        ),
        directory=value(str(PROJECT_DIR)),
        processes=workers,
        longest_timeout=TIMEOUT_SECONDS,
        environment={"PYTHONUNBUFFERED": "1", EFFECTS_ENV: str(scratch.effects)},
        logfile=f"{var}/log/%(program_name)s-%(process_num)02d.log",
    )
    return render_conf("; python -m bench.chaos: supervisord of the soak\n", var, program)


@dataclass
class Supervisord:
    """One supervisord in the foreground on `conf`, started again after each kill."""

    conf: Path
    socket: Path
    output: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf)],
                cwd=PROJECT_DIR,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def is_up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, method: str, *args: Any) -> Any:
        """supervisord's XML-RPC `method`, with the socket's name and password from `conf`."""
        with supervisor_rpc(self.socket, self.conf) as rpc:
            return getattr(rpc, method)(*args)

    def workers(self) -> list[dict[str, Any]]:
        """Supervisor's view of the worker processes ([] while it does not answer)."""
        if not self.is_up():
            return []
        try:
            infos = self.call("getAllProcessInfo")
        except (OSError, xmlrpc.client.Error):
            return []
        return [i for i in infos if i["group"] == PROGRAM]

    def running_pids(self) -> list[int]:
        return [i["pid"] for i in self.workers() if i["statename"] == "RUNNING" and i["pid"]]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self, graceful_seconds: float = 60) -> None:
        """Shut down in order (SIGTERM); SIGKILL what is left after `graceful_seconds`."""
        if self.is_up():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=graceful_seconds)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.chaos: {what} did not happen within {timeout:g} s")
        time.sleep(0.1)


# ---- producers -----------------------------------------------------------------------------


@dataclass
class Produced:
    """What the producers were told: accepted tasks (tag -> id) and refused ones."""

    accepted: dict[str, str] = field(default_factory=dict)
    by_kind: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    refused_tags: set[str] = field(default_factory=set)
    refusals: Counter[str] = field(default_factory=Counter)  # error line -> times
    tracebacks: list[str] = field(default_factory=list)  # CLI errors that were not one line
    anomalies: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, kind: str, tags: list[str], ids: list[str]) -> None:
        with self.lock:
            self.accepted.update(zip(tags, ids, strict=True))
            self.by_kind[kind] += len(tags)

    def refuse(self, kind: str, tags: list[str], error: str) -> None:
        with self.lock:
            self.refused[kind] += len(tags)
            self.refused_tags.update(tags)
            self.refusals[error.strip().splitlines()[-1][:200] if error.strip() else "?"] += 1


@dataclass(frozen=True)
class Job:
    kind: str
    size: int


def plan_jobs(tasks: int, rng: random.Random) -> tuple[list[Job], list[Job]]:
    """The producers' calls, shuffled: (the shell's, the Python API's and dropper's)."""
    jobs: list[Job] = []
    left = tasks
    for n, (kind, share) in enumerate(SHARES.items()):
        count = left if n == len(SHARES) - 1 else round(tasks * share)
        left -= count
        low, high = BATCH_SIZES.get(kind, (1, 1))
        while count > 0:
            size = min(count, rng.randint(low, high))
            jobs.append(Job(kind, size))
            count -= size
    rng.shuffle(jobs)
    return [j for j in jobs if j.kind in SHELL_KINDS], [
        j for j in jobs if j.kind not in SHELL_KINDS
    ]


class Producer:
    """Runs its jobs spread over the chaos; a refused call is retried (new tags) until taken."""

    def __init__(
        self, scratch: Scratch, app: Spool, produced: Produced, seed: int, abort: threading.Event
    ) -> None:
        self.scratch, self.app, self.produced, self.abort = scratch, app, produced, abort
        self.rng = random.Random(seed)
        self.serial = 0
        self.incoming = QueueDirs(scratch.root, QUEUE).incoming
        self.spool = [sys.executable, "-m", "spool", "--root", str(scratch.root)]
        self.spool += ["--config", str(scratch.config)]

    def run(self, jobs: list[Job], seconds: float, start: float) -> None:
        """Job n starts at `start + n * seconds / len(jobs)`; a refused job (a full disk) is
        tried again 0.2 s later, after the next job (so every kind meets the full disk)."""
        todo, every, n = deque(jobs), seconds / max(1, len(jobs)), 0
        while todo and not self.abort.is_set():
            self.abort.wait(max(0.0, start + n * every - time.monotonic()))
            job = todo.popleft()
            if self.produce(job):
                n += 1
            else:
                todo.insert(min(1, len(todo)), job)
                self.abort.wait(0.2)

    def tasks(self, kind: str, size: int) -> list[tuple[str, dict[str, Any]]]:
        made = []
        for _ in range(size):
            self.serial += 1
            tag = f"{kind}-{self.serial}"
            made.append((tag, {"task": TASK, "args": [tag, self.rng.randint(0, 20)]}))
        return made

    def produce(self, job: Job) -> bool:
        tasks = self.tasks(job.kind, job.size)
        tags = [tag for tag, _ in tasks]
        try:
            ids = self.call(job.kind, tasks)
        except Exception as exc:
            self.produced.refuse(job.kind, tags, f"{type(exc).__name__}: {exc}")
            return False
        if ids is None:
            return False
        self.produced.accept(job.kind, tags, ids)
        return True

    def call(self, kind: str, tasks: list[tuple[str, dict[str, Any]]]) -> list[str] | None:
        if kind == "cli":
            ((tag, task),) = tasks
            return self.shell(kind, [tag], ["enqueue", TASK, tag, str(task["args"][1])])
        if kind == "cli-from":
            feed = self.scratch.feeds / f"{tasks[0][0]}.jsonl"
            feed.write_text("".join(json.dumps(task) + "\n" for _, task in tasks))
            return self.shell(kind, [tag for tag, _ in tasks], ["enqueue", "--from", str(feed)])
        if kind == "api":
            ((_, task),) = tasks
            return [self.app.enqueue(TASK, args=task["args"])]
        if kind == "api-many":
            return self.app.enqueue_many([task for _, task in tasks])
        ((tag, task),) = tasks
        return [self.drop(tag, task)]

    def shell(self, kind: str, tags: list[str], args: list[str]) -> list[str] | None:
        result = subprocess.run(
            [*self.spool, *args],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["(nothing)"]
            if len(lines) != 1 or "Traceback" in result.stderr:
                with self.produced.lock:
                    self.produced.tracebacks.append(
                        f"`spool {' '.join(args[:2])} ...` exit {result.returncode}, "
                        f"{len(lines)} lines on stderr: {lines[0]} ... {lines[-1]}"
                    )
            self.produced.refuse(kind, tags, result.stderr)
            return None
        ids = result.stdout.split()
        if len(ids) != len(tags):
            with self.produced.lock:
                self.produced.anomalies.append(f"spool {args[1]}: {len(ids)} ids for {len(tags)}")
            self.produced.refuse(kind, tags, "wrong number of ids printed")
            return None
        return ids

    def drop(self, tag: str, task: dict[str, Any]) -> str:
        """Another program's way: write under a dot-name, rename into incoming/ (id: the stem)."""
        staging = self.incoming / f".{tag}.part"
        try:
            staging.write_bytes(json.dumps(task).encode())
            os.rename(staging, self.incoming / f"{tag}.json")
        except OSError:
            staging.unlink(missing_ok=True)
            raise
        return tag


# ---- chaos ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the chaos did."""

    worker_kills: int = 0
    handler_kills: int = 0
    supervisord_kills: int = 0
    orphaned_workers: int = 0
    orphans_killed: int = 0
    orphan_ids: set[str] = field(default_factory=set)
    fatal_restarts: int = 0
    disk_full_at: float | None = None
    disk_full_seconds: float = 0.0
    filler_bytes: int = 0


class Chaos:
    """Strikes at the planned moments, one at a time, until the plan is done."""

    def __init__(self, plan: Plan, scratch: Scratch, sv: Supervisord, full_disk: bool) -> None:
        self.plan, self.scratch, self.sv = plan, scratch, sv
        self.rng = random.Random(plan.seed + 3)
        self.tally = Tally()
        self.events: list[tuple[float, int, str]] = []
        self.serial = 0
        self.orphans: set[int] = set()
        self.filler = scratch.root / ".chaos-filler"
        self.full_disk = full_disk
        self.full_since = 0.0

    def at(self, when: float, what: str) -> None:
        self.serial += 1
        heapq.heappush(self.events, (when, self.serial, what))

    def schedule(self, start: float) -> None:
        plan, rng, end = self.plan, self.rng, start + self.plan.seconds
        for _ in range(plan.worker_kills):
            self.at(rng.uniform(start + 3, end - 1), "worker")
        for _ in range(plan.handler_kills):
            self.at(rng.uniform(start + 3, end - 1), "handler")
        slot = (plan.seconds - 8) / max(1, plan.supervisord_kills)
        for n in range(plan.supervisord_kills):  # spread out: one in each slot
            self.at(start + 4 + slot * (n + rng.uniform(0.1, 0.9)), "supervisord")
        if self.full_disk:
            self.at(start + plan.seconds / 2, "fill")
        self.at(start + 1, "watch")
        self.at(end, "end")

    def run(self, start: float) -> None:
        """Strike until the end of the plan, and then until every planned strike is done
        (one that found no target is tried again a moment later), for at most 60 s more."""
        self.schedule(start)
        give_up = start + self.plan.seconds + 60
        while self.events:
            when, _, what = heapq.heappop(self.events)
            if what == "end" or (what == "watch" and when > give_up):
                if any(w != "watch" for _, _, w in self.events) and when < give_up:
                    self.later(0.5, "end")
                    continue
                break
            time.sleep(max(0.0, when - time.monotonic()))
            getattr(self, f"strike_{what}")()

    def later(self, seconds: float, what: str) -> None:
        self.at(time.monotonic() + seconds, what)

    def strike_worker(self) -> None:
        candidates = set(self.sv.running_pids()) | {p for p in self.orphans if is_worker(p)}
        candidates = {p for p in candidates if is_worker(p)}
        if not candidates:
            self.later(0.25, "worker")
            return
        if kill(self.rng.choice(sorted(candidates))):
            self.tally.worker_kills += 1

    def strike_handler(self) -> None:
        handlers = [w.handler_pid for w in live_workers(self.scratch.root) if w.handler_pid]
        if not handlers:
            self.later(0.25, "handler")
            return
        if kill(self.rng.choice(handlers)):
            self.tally.handler_kills += 1

    def strike_supervisord(self) -> None:
        if not self.sv.is_up():
            self.later(0.5, "supervisord")
            return
        assert self.sv.proc is not None
        children = children_of(self.sv.proc.pid)  # starting ones too (no info file yet)
        self.sv.kill()
        self.tally.supervisord_kills += 1
        orphans = {pid for pid in children if is_worker(pid)}
        self.orphans |= orphans
        self.tally.orphaned_workers += len(orphans)
        ids = {w.pid: w.worker_id for w in live_workers(self.scratch.root)}
        self.tally.orphan_ids |= {ids[pid] for pid in orphans if pid in ids}
        self.later(self.rng.uniform(0.5, 2.0), "restart")
        self.later(self.rng.uniform(3.0, 6.0), "orphans")

    def strike_restart(self) -> None:
        self.sv.start()

    def strike_orphans(self) -> None:
        ids = {w.pid: w.worker_id for w in live_workers(self.scratch.root)}
        self.tally.orphan_ids |= {ids[pid] for pid in self.orphans if pid in ids}
        for pid in sorted(self.orphans):
            if is_worker(pid) and kill(pid):
                self.tally.orphans_killed += 1
        self.orphans.clear()

    def strike_fill(self) -> None:
        self.tally.disk_full_at = time.monotonic()
        self.tally.filler_bytes = fill(self.filler)
        self.full_since = time.monotonic()
        self.later(self.plan.full_disk_seconds, "free")

    def strike_free(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.tally.disk_full_seconds = time.monotonic() - self.full_since

    def strike_watch(self) -> None:
        self.watch()
        self.later(1.0, "watch")

    def watch(self) -> None:
        """Start again the workers Supervisor gave up on (FATAL: they kept dying at start)."""
        for info in self.sv.workers():
            if info["statename"] == "FATAL":
                with contextlib.suppress(OSError, xmlrpc.client.Error):
                    self.sv.call("startProcess", f"{PROGRAM}:{info['name']}", False)
                    self.tally.fatal_restarts += 1


def fill(path: Path) -> int:
    """Write `path` until its filesystem is full; return the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as out:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
            while True:
                try:
                    written += out.write(chunk) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


# ---- drain and verdict ---------------------------------------------------------------------


def visible(directory: Path) -> list[str]:
    try:
        return [n for n in os.listdir(directory) if not n.startswith(".")]
    except FileNotFoundError:
        return []


def pending(root: Path) -> int:
    """Tasks not at an end: in incoming/ or delayed/, or claimed (committed claims too)."""
    dirs = QueueDirs(root, QUEUE)
    claims = [n for n in os.listdir(dirs.processing) if "@" in n]
    return len(visible(dirs.incoming)) + len(visible(dirs.delayed)) + len(claims)


def drain(root: Path, seconds: float, chaos: Chaos) -> float:
    """Seconds until nothing is pending twice in a row, at most `seconds`."""
    start = time.monotonic()
    quiet = 0
    while time.monotonic() - start < seconds:
        chaos.watch()
        quiet = quiet + 1 if pending(root) == 0 else 0
        if quiet == 2:
            break
        time.sleep(0.5)
    return time.monotonic() - start


@dataclass
class Verdict:
    figures: dict[str, Any] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)

    def fail(self, promise: str, evidence: list[str] | None = None) -> None:
        self.broken.append(promise)
        self.evidence.extend(evidence or [])


def read_effects(path: Path) -> dict[str, list[tuple[int, float]]]:
    runs: dict[str, list[tuple[int, float]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            tag, pid, at = line.split()
            runs.setdefault(tag, []).append((int(pid), float(at)))
    return runs


def read_ended(directory: Path) -> dict[str, dict[str, Any]]:
    """Task files of done/ or failed/ by file name stem (error files left out)."""
    ended = {}
    for name in visible(directory):
        if name.endswith(".json") and not name.endswith(".error.json"):
            with contextlib.suppress(OSError, ValueError):
                ended[name.removesuffix(".json")] = json.loads((directory / name).read_bytes())
    return ended


def tag_of(task: dict[str, Any]) -> str | None:
    args = task.get("args")
    return args[0] if isinstance(args, list) and args and isinstance(args[0], str) else None


def lost_attempts(task: dict[str, Any]) -> list[dict[str, Any]]:
    history = task.get("history") or []
    return [h for h in history if (h.get("error") or {}).get("type") in LOST_TYPES]


def log_lines(var: Path, needle: str, limit: int = 4) -> list[str]:
    found: list[str] = []
    for path in sorted((var / "log").glob(f"{PROGRAM}-*.log*")):
        with open(path, errors="replace") as f:
            found.extend(f"    {path.name}: {line.rstrip()}" for line in f if needle in line)
    return found[:limit]


def describe(task_id: str, task: dict[str, Any], runs: list[tuple[int, float]], var: Path) -> str:
    history = [
        f"#{h.get('attempt')} {(h.get('error') or {}).get('type')} by {h.get('worker')}"
        for h in task.get("history") or []
    ]
    effects = [f"pid {pid} at {at:.3f}" for pid, at in runs]
    lines = [
        f"  {task_id} (tag {tag_of(task)}): attempts {task.get('attempts')}, "
        f"history [{'; '.join(history)}], handler ran {len(runs)}x [{', '.join(effects)}], "
        f"finished by {task.get('worker')}",
        *log_lines(var, task_id),
    ]
    return "\n".join(lines)


def judge(scratch: Scratch, produced: Produced, tally: Tally) -> Verdict:
    """Check every promise on the drained spool; the figures and what broke."""
    verdict = Verdict()
    dirs = QueueDirs(scratch.root, QUEUE)
    done, failed = read_ended(dirs.done), read_ended(dirs.failed)
    runs = read_effects(scratch.effects)
    check_ends(verdict, produced, done, failed, scratch.var, runs)
    check_left(verdict, dirs)
    count_lost(verdict, [*done.values(), *failed.values()])
    check_runs(verdict, done, runs, scratch.var)
    check_producers(verdict, produced, done)
    check_workers(verdict, scratch.var)
    verdict.figures["done by orphaned workers"] = sum(
        1 for task in done.values() if task.get("worker") in tally.orphan_ids
    )
    return verdict


def check_ends(
    verdict: Verdict,
    produced: Produced,
    done: dict[str, dict[str, Any]],
    failed: dict[str, dict[str, Any]],
    var: Path,
    runs: dict[str, list[tuple[int, float]]],
) -> None:
    done_tags = Counter(tag_of(task) for task in done.values())
    missing = sorted(t for t in produced.accepted if done_tags[t] == 0)
    twice = sorted(t for t in produced.accepted if done_tags[t] > 1)
    wrong_id = sorted(
        t for t, task_id in produced.accepted.items() if done_tags[t] and task_id not in done
    )
    verdict.figures.update(done=len(done), failed=len(failed))
    if missing:
        where = [f"  {t} (id {produced.accepted[t]}): not in done/" for t in missing[:5]]
        verdict.fail(f"{len(missing)} accepted task(s) not in done/", where)
    if twice:
        verdict.fail(f"{len(twice)} task(s) in done/ more than once", twice[:5])
    if wrong_id:
        verdict.fail(f"{len(wrong_id)} task(s) in done/ under another id", wrong_id[:5])
    if failed:
        kinds = Counter((t.get("error") or {}).get("type") for t in failed.values())
        verdict.figures["failed by error type"] = dict(kinds)
        evidence = [
            describe(task_id, task, runs.get(tag_of(task) or "", []), var)
            for task_id, task in sorted(failed.items())[:5]
        ]
        verdict.fail(f"{len(failed)} task(s) in failed/ ({dict(kinds)})", evidence)


def check_left(verdict: Verdict, dirs: QueueDirs) -> None:
    left = {
        "incoming": visible(dirs.incoming),
        "delayed": visible(dirs.delayed),
        "processing": [n for n in os.listdir(dirs.processing) if "@" in n],
    }
    verdict.figures["left in incoming/delayed/processing"] = "/".join(
        str(len(v)) for v in left.values()
    )
    for state, entries in left.items():
        if entries:
            verdict.fail(f"{len(entries)} task(s) left in {state}/", entries[:5])


def count_lost(verdict: Verdict, ended: list[dict[str, Any]]) -> None:
    """Lost attempts in the history of every task at its end (done/ and failed/)."""
    lost_by: Counter[str] = Counter()
    for task in ended:
        for entry in lost_attempts(task):
            message = str(entry["error"].get("message", ""))
            lost_by["handler process" if "handler process" in message else "worker"] += 1
    over_default = sum(1 for t in ended if len(t.get("history") or []) > DEFAULT_MAX_RETRIES)
    verdict.figures.update(
        {
            "lost attempts (worker died / handler process died)": (
                f"{sum(lost_by.values())} ({lost_by['worker']} / {lost_by['handler process']})"
            ),
            "tasks with more than 3 failed attempts (failed/ with max_retries=3)": over_default,
        }
    )


def check_runs(
    verdict: Verdict,
    done: dict[str, dict[str, Any]],
    runs: dict[str, list[tuple[int, float]]],
    var: Path,
) -> None:
    """Each done task's handler ran once, plus at most once per lost attempt."""
    explained, unexplained, never = [], [], []
    for task_id, task in sorted(done.items()):
        n = len(runs.get(tag_of(task) or "", []))
        if n == 0:
            never.append(task_id)
        elif n > 1 + len(lost_attempts(task)):
            unexplained.append(task_id)
        elif n > 1:
            explained.append(task_id)
    verdict.figures["duplicated runs explained / unexplained"] = (
        f"{len(explained)} / {len(unexplained)}"
    )
    if never:
        verdict.fail(f"{len(never)} task(s) in done/ whose handler never ran", never[:5])
    if unexplained:
        evidence = [
            describe(i, done[i], runs.get(tag_of(done[i]) or "", []), var) for i in unexplained[:5]
        ]
        verdict.fail(
            f"{len(unexplained)} task(s) whose handler ran more often than attempts were lost",
            evidence,
        )


def check_producers(verdict: Verdict, produced: Produced, done: dict[str, dict[str, Any]]) -> None:
    ghosts = sorted(
        t for t in (tag_of(task) for task in done.values()) if t in produced.refused_tags
    )
    if ghosts:
        verdict.fail(f"{len(ghosts)} enqueue(s) reported an error but enqueued anyway", ghosts[:5])
    if produced.tracebacks:
        verdict.fail(
            f"{len(produced.tracebacks)} CLI error(s) not one line",
            produced.tracebacks[:3],
        )
    if produced.anomalies:
        verdict.fail("producers saw anomalies", produced.anomalies[:5])


EXIT_LINE = re.compile(r"exited: (\S+) \((.*?)\)")


def check_workers(verdict: Verdict, var: Path) -> None:
    """Supervisor's log: a worker that ended other than by the soak's SIGKILL broke a promise."""
    ends: Counter[str] = Counter()
    own: list[str] = []
    log = var / "log" / "supervisord.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        match = EXIT_LINE.search(line)
        if match:
            ends[match.group(2)] += 1
            if "SIGKILL" not in match.group(2):
                own.append(line)
    verdict.figures["worker ends seen by supervisord"] = dict(ends)
    verdict.figures["FATAL (supervisord gave up)"] = text.count("entered FATAL state")
    if own:
        tracebacks = [
            line
            for path in sorted((var / "log").glob(f"{PROGRAM}-*.log*"))
            for line in path.read_text(errors="replace").splitlines()
            if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)
        ]
        verdict.fail(
            f"{len(own)} worker(s) exited on their own", own[:5] + sorted(set(tracebacks))[:5]
        )


# ---- the run -------------------------------------------------------------------------------


def produce(
    scratch: Scratch, plan: Plan, produced: Produced, abort: threading.Event, start: float
) -> list[threading.Thread]:
    app = Spool(settings=load_settings(str(scratch.root), str(scratch.config), env={}))
    shell_jobs, api_jobs = plan_jobs(plan.tasks, random.Random(plan.seed))
    seconds = plan.seconds * 0.85  # the last tasks still meet some chaos
    threads = []
    for n, jobs in enumerate((shell_jobs, api_jobs)):
        producer = Producer(scratch, app, produced, plan.seed + 1 + n, abort)
        thread = threading.Thread(target=producer.run, args=(jobs, seconds, start), daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def soak(plan: Plan, scratch: Scratch, full_disk: bool) -> tuple[Verdict, Produced, Tally]:
    sv = Supervisord(
        scratch.base / "supervisord.conf",
        scratch.var / "supervisor.sock",
        scratch.var / "supervisord.out",
    )
    sv.conf.write_text(render_supervisord_conf(scratch, plan.workers))
    produced, abort = Produced(), threading.Event()
    chaos = Chaos(plan, scratch, sv, full_disk)
    began = time.monotonic()
    sv.start()
    try:
        wait_for(lambda: len(sv.running_pids()) == plan.workers, 60, "the workers' start")
        start = time.monotonic()
        threads = produce(scratch, plan, produced, abort, start)
        chaos.run(start)
        for thread in threads:
            thread.join()
        chaos.strike_orphans()
        if not sv.is_up():
            sv.start()
        chaos_seconds = time.monotonic() - start
        drain_seconds = drain(scratch.root, plan.drain_seconds, chaos)
        verdict = judge(scratch, produced, chaos.tally)
    finally:
        abort.set()
        chaos.filler.unlink(missing_ok=True)
        chaos.strike_orphans()
        sv.stop()
        for pid in workers_on(scratch.root):  # orphans the soak did not see start
            kill(pid)
        wait_for(lambda: not workers_on(scratch.root), 30, "the end of every worker")
    if drain_seconds >= plan.drain_seconds:
        verdict.fail(f"not drained within {plan.drain_seconds:g} s")
    verdict.figures.update(
        {
            "seconds: chaos / drain / whole run": (
                f"{chaos_seconds:.0f} / {drain_seconds:.1f} / {time.monotonic() - began:.0f}"
            ),
        }
    )
    return verdict, produced, chaos.tally


def report(plan: Plan, verdict: Verdict, produced: Produced, tally: Tally, note: str) -> None:
    kinds = ", ".join(f"{k} {produced.by_kind[k]:,}" for k in SHARES)
    refused = ", ".join(f"{k} {n:,}" for k, n in produced.refused.items()) or "none"
    print(f"chaos soak: {len(produced.accepted):,} tasks accepted ({kinds})")
    print(f"  refused enqueues (tasks; made again with new tags): {refused}")
    for line, times in produced.refusals.most_common(4):
        print(f"    {times}x {line}")
    print(
        f"  workers {plan.workers} under supervisord, max_retries {plan.max_retries}, "
        f"seed {plan.seed}"
    )
    print(
        f"  kills: {tally.worker_kills} workers, {tally.supervisord_kills} supervisord "
        f"({tally.orphaned_workers} workers orphaned, {tally.orphans_killed} of them killed "
        f"later), {tally.handler_kills} handler processes; FATAL workers started again "
        f"{tally.fatal_restarts}"
    )
    if tally.disk_full_at is not None:
        print(
            f"  disk full: {tally.disk_full_seconds:.1f} s "
            f"(tmpfs {plan.tmpfs_size}, filler {tally.filler_bytes / 2**20:.1f} MiB)"
        )
    else:
        print(f"  disk full: skipped ({note})")
    for name, figure in verdict.figures.items():
        print(f"  {name}: {figure}")
    if not verdict.broken:
        print("verdict: every promise held")
        return
    print(f"verdict: {len(verdict.broken)} promise(s) broken")
    for promise in verdict.broken:
        print(f"  BROKEN: {promise}")
    if verdict.evidence:
        print("evidence:")
        for line in verdict.evidence:
            print(line if line.startswith("  ") else f"  {line}")


def full_disk_possible(plan: Plan) -> str | None:
    """Why the full-disk phase cannot run here, or None."""
    if plan.full_disk_seconds <= 0:
        return "--full-disk 0"
    if os.geteuid() != 0:
        return "not root: mounting the tmpfs that gets full needs root"
    return None


def parse_plan(argv: list[str] | None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    add = parser.add_argument
    add("--tasks", type=int, default=10_000, help="tasks to enqueue (default 10,000)")
    add("--seconds", type=float, default=180.0, help="length of the chaos (default 180)")
    add("--workers", type=int, default=2, help="worker processes (default 2)")
    add("--worker-kills", type=int, default=60, help="SIGKILLs of workers (default 60)")
    add("--supervisord-kills", type=int, default=5, help="SIGKILLs of supervisord (default 5)")
    add("--handler-kills", type=int, default=20, help="SIGKILLs of handler processes")
    add("--full-disk", type=float, default=5.0, help="seconds of full disk (0: none; root)")
    add("--tmpfs-size", default="64m", help="size of the root's tmpfs (default 64m)")
    add("--max-retries", type=int, default=100, help="the workers' max_retries (default 100)")
    add("--drain-seconds", type=float, default=120.0, help="deadline of the drain (default 120)")
    add("--seed", type=int, default=1)
    add("--json", type=Path, help="write the figures and broken promises here")
    add("--keep", action="store_true", help="keep the scratch directory (and a copy of the spool)")
    args = parser.parse_args(argv)
    plan = Plan(
        tasks=args.tasks,
        seconds=args.seconds,
        workers=args.workers,
        worker_kills=args.worker_kills,
        supervisord_kills=args.supervisord_kills,
        handler_kills=args.handler_kills,
        full_disk_seconds=args.full_disk,
        tmpfs_size=args.tmpfs_size,
        max_retries=args.max_retries,
        drain_seconds=args.drain_seconds,
        seed=args.seed,
    )
    if plan.seconds < 10 and plan.supervisord_kills:
        parser.error("--seconds: at least 10 with supervisord kills")
    return plan, args


def main(argv: list[str] | None = None) -> int:
    plan, args = parse_plan(argv)
    why_not = full_disk_possible(plan)
    scratch = make_scratch(plan, tmpfs=why_not is None)
    try:
        verdict, produced, tally = soak(plan, scratch, full_disk=why_not is None)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "plan": asdict(plan),
                        "accepted": len(produced.accepted),
                        "by_kind": dict(produced.by_kind),
                        "refused": dict(produced.refused),
                        "tally": {**asdict(tally), "orphan_ids": sorted(tally.orphan_ids)},
                        "figures": verdict.figures,
                        "broken": verdict.broken,
                        "evidence": verdict.evidence,
                    },
                    indent=1,
                )
            )
    finally:
        remove_scratch(scratch, args.keep)
    report(plan, verdict, produced, tally, why_not or "")
    return 1 if verdict.broken else 0


if __name__ == "__main__":
    sys.exit(main())
