"""Where a worker parent spends its time per task while it drains no-op tasks.

    python -m bench profile [--tasks N] [--rate HZ] [--no-strace] [--out MD] [--flame SVG]

1. N no-op tasks are queued; 2 resident workers start; py-spy samples the first one (wall
   clock, idle samples included, per thread) until the queue is drained. Per-thread CPU comes
   from /proc/<pid>/task/<tid>/stat. The main thread's samples are put in phases (logging, the
   waiting for replies, writing the outcome file, syncs, claiming, event hints, ...), and shown in
   microseconds per task (share of the main thread's wall time x drain time / its tasks).
2. Unless --no-strace: the same drain with one worker whose parent (all its threads, not the
   handler child) runs under `strace -c -f`: system calls per task.
3. The same drain once more, with py-spy following the worker's handler process too
   (`--subprocesses`), writes an on-CPU flame graph (default bench/profile-flame.svg).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.core import (
    BENCH_DIR,
    CLK_TCK,
    Lab,
    children,
    code_version,
    count,
    cpu_seconds,
    done_path,
    noop_tasks,
    queue_dir,
    stop,
    wait_for,
)
from spool import Spool

PHASES = [  # (frame substring, phase): the first that occurs anywhere in a stack wins
    ("Logger.", "logging (format + write stderr line)"),
    ("logging/__init__", "logging (format + write stderr line)"),
    ("Committer.", "committer: syncfs, publish, conclude, unlink claims"),
    ("sync_filesystem", "committer: syncfs, publish, conclude, unlink claims"),
    ("stage_verdict", "record: stage the outcome file in tmp/"),
    ("Recorder.fence", "record: hide the claim (rename)"),
    ("Recorder.", "record: decide + serialise outcome, event, counters"),
    ("Attempts.prepare", "prepare the request (context fields)"),
    ("HandOverList", "write the hand-over list"),
    ("Channel.send", "send to the handler process"),
    ("await_reply", "wait for / read replies"),
    ("read_claimed", "read + parse claimed file"),
    ("claim_next", "claim: index pop + rename"),
    ("put_back", "hand back unstarted tasks"),
    ("absorb_hints", "absorb event hints"),
    ("rescan_all", "rescans, recovery, reaping"),
    ("housekeeping", "rescans, recovery, reaping"),
    ("promote_due", "promote due delayed tasks"),
    ("Event.wait", "idle: waiting for a wake-up"),
    ("Executor.run", "handler run: other"),
    ("Dispatch.", "dispatch: other"),
    ("Worker.loop", "loop: other"),
]


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install -e '.[bench]'")
    return found


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """CPU seconds (user, system) per thread id of a live process."""
    out: dict[int, tuple[float, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return out


def parse_raw(path: Path) -> tuple[collections.Counter[str], list[tuple[list[str], int]]]:
    """Samples per thread label, and the main thread's (frames, count)."""
    threads: collections.Counter[str] = collections.Counter()
    main: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        threads[frames[0]] += int(n)
        if "MainThread" in frames[0]:
            main.append((frames[1:], int(n)))
    return threads, main


def phase_of(frames: list[str]) -> str:
    joined = ";".join(frames)
    for needle, phase in PHASES:
        if needle in joined:
            return phase
    return "start-up / other"


@dataclass
class Drain:
    """A drain of no-op tasks by 2 resident workers, the first of them under py-spy."""

    root: Path
    ids: list[str]
    target: subprocess.Popen[bytes]


@contextlib.contextmanager
def spied_drain(lab: Lab, name: str, tasks: int, rate: int, spy_args: list[str]) -> Iterator[Drain]:
    """Queue `tasks` no-op tasks, start 2 workers and py-spy on the first (`spy_args`: its
    output options); the body runs once the queue is drained, py-spy still sampling."""
    root = lab.root(name)
    ids = Spool(root=root).enqueue_many(noop_tasks(tasks))
    procs = [lab.worker(root) for _ in range(2)]
    target = procs[0]
    command = [py_spy(), "record", "-p", str(target.pid), "-r", str(rate), "--nolineno"]
    spy = subprocess.Popen(
        [*command, "--nonblocking", *spy_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: count(queue_dir(root, "done")) >= tasks, 600, 0.05, "the drain")
        yield Drain(root, ids, target)
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
        for proc in procs:
            stop(proc)


def flame_graph(lab: Lab, tasks: int, rate: int, out: Path) -> list[str]:
    """An on-CPU flame graph (SVG) of worker 1 of 2 and its handler process during a drain."""
    spy_args = ["-f", "flamegraph", "--subprocesses", "-o", str(out)]
    with spied_drain(lab, "profile-flame", tasks, rate, spy_args):
        pass
    return [
        "## Flame graph",
        "",
        f"[`{out.name}`]({out.name}): on-CPU samples of a worker parent (its threads) and of "
        f"its handler process (`--subprocesses`) over the same drain of {tasks:,} no-op tasks; "
        "open it in a browser to zoom.",
        "",
    ]


def profile_drain(lab: Lab, tasks: int, rate: int, idle: bool) -> list[str]:
    """Profile worker 1 of 2 during a drain: wall clock (idle samples kept) or on-CPU only."""
    raw = lab.base / f"pyspy-{'wall' if idle else 'cpu'}.txt"
    spy_args = ["-f", "raw", "--threads", *(["--idle"] if idle else []), "-o", str(raw)]
    with spied_drain(lab, "profile-wall" if idle else "profile-cpu", tasks, rate, spy_args) as d:
        per_thread = thread_cpu(d.target.pid)
        child_cpu = sum(cpu_seconds(c) for c in children(d.target.pid))
        child_split = [thread_cpu(c).get(c, (0.0, 0.0)) for c in children(d.target.pid)]
    root, ids, target = d.root, d.ids, d.target
    done = [json.loads(done_path(root, i).read_bytes()) for i in ids]
    mine = [t for t in done if f"-{target.pid}-" in t["worker"]]
    span = max(t["finished_at"] for t in done) - min(t["started_at"] for t in done)
    n_mine = len(mine)
    threads, main = parse_raw(raw)

    main_cpu = sum(per_thread.get(target.pid, (0.0, 0.0))) / max(n_mine, 1) * 1e6
    lines = [
        f"## {'Wall clock' if idle else 'On-CPU'} profile (py-spy "
        f"{'with' if idle else 'without'} --idle)",
        "",
        f"Drain of {tasks:,} no-op tasks by 2 resident workers: {tasks / span:,.0f} tasks/s "
        f"(first start -> last finish, {span:.2f} s); profiled worker (pid {target.pid}) ran "
        f"{n_mine:,} of them, {span / max(n_mine, 1) * 1e6:,.0f} us of wall time per task.",
        "",
        "CPU per task of the profiled worker, by thread (from /proc; py-spy label by thread id):",
        "",
        "| thread | CPU us/task | of which kernel | py-spy samples |",
        "| --- | --- | --- | --- |",
    ]
    labels: dict[int, str] = {}
    for label, _ in threads.most_common():  # a thread seen under two names: the commoner
        tid = label.partition("(")[2].partition(")")[0]
        if tid.isdigit():
            labels.setdefault(int(tid), label)
    for tid, (user, system) in sorted(per_thread.items(), key=lambda kv: -sum(kv[1])):
        label = labels.get(tid, f"thread ({tid}): (no samples)")
        lines.append(
            f"| {label} | {(user + system) / n_mine * 1e6:,.0f} | "
            f"{system / n_mine * 1e6:,.0f} | {threads.get(label, 0):,} |"
        )
    child_sys = sum(s for _, s in child_split)
    lines.append(
        f"| handler child process | {child_cpu / n_mine * 1e6:,.0f} | "
        f"{child_sys / n_mine * 1e6:,.0f} | - |"
    )
    lines.append("")

    total = sum(n for _, n in main)
    phases: collections.Counter[str] = collections.Counter()
    for frames, n in main:
        phases[phase_of(frames)] += n
    per_task = span / max(n_mine, 1) * 1e6 if idle else main_cpu
    lines += [
        "Main thread, wall time by phase (py-spy, idle samples included; us/task = share x "
        "wall time per task):"
        if idle
        else "Main thread, CPU time by phase (py-spy on-CPU samples; us/task = share x the "
        "main thread's CPU per task):",
        "",
        "| phase | share | us/task |",
        "| --- | --- | --- |",
    ]
    for phase, n in phases.most_common():
        lines.append(f"| {phase} | {n / total:.1%} | {n / total * per_task:,.0f} |")
    lines.append("")

    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    for frames, n in main:
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            leaf[frames[-1]] += n
    lines += [
        "Main thread, top functions by inclusive share:",
        "",
        "| function | share |",
        "| --- | --- |",
    ]
    skip = (
        "<module>",
        "_run_",
        "click/",
        "main (",
        "run_worker",
        "Worker.run",
        "Worker.loop",
        "cli/",
    )
    shown = 0
    for frame, n in inclusive.most_common():
        if any(s in frame for s in skip):
            continue
        lines.append(f"| `{frame}` | {n / total:.1%} |")
        shown += 1
        if shown >= 30:
            break
    lines += [
        "",
        "Main thread, top leaf frames (self time):",
        "",
        "| frame | share |",
        "| --- | --- |",
    ]
    for frame, n in leaf.most_common(20):
        lines.append(f"| `{frame}` | {n / total:.1%} |")
    lines.append("")
    others = {k: v for k, v in threads.items() if "MainThread" not in k}
    if others:
        lines.append("Other threads of the profiled worker, top leaf frames:")
        lines.append("")
        other_leaf: collections.Counter[str] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            if n.isdigit() and "MainThread" not in frames[0]:
                other_leaf[f"{frames[0]}: {frames[-1]}"] += int(n)
        lines += ["| thread: frame | samples |", "| --- | --- |"]
        for frame, n in other_leaf.most_common(12):
            lines.append(f"| `{frame}` | {n:,} |")
        lines.append("")
    return lines


def strace_drain(lab: Lab, tasks: int) -> list[str]:
    strace = shutil.which("strace")
    if strace is None:
        return ["(strace not installed: no syscall counts)", ""]
    root = lab.root("strace")
    ids = Spool(root=root).enqueue_many(noop_tasks(tasks + 1))
    proc = lab.worker(root)
    # let it start (and spawn its handler child, which is then not traced), then attach
    wait_for(lambda: done_path(root, ids[0]).exists(), 60, 0.005, "the first task")
    out = root.parent / "strace.txt"
    tracer = subprocess.Popen(
        [strace, "-c", "-f", "-o", str(out), "-p", str(proc.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    before = count(queue_dir(root, "done"))
    try:
        wait_for(lambda: count(queue_dir(root, "done")) >= tasks + 1, 600, 0.05, "the drain")
        traced = count(queue_dir(root, "done")) - before
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        stop(proc)
    lines = [
        f"System calls of one worker parent (all threads, strace -c -f) over about {traced:,} "
        "no-op tasks (the tail of the drain and the idle wait after it are included; strace "
        "slows the worker, so only the counts matter):",
        "",
        "| syscall | calls/task | errors/task |",
        "| --- | --- | --- |",
    ]
    rows = []
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[0].replace(".", "").isdigit() or parts[-1] == "total":
            continue
        name = parts[-1]
        calls = int(parts[3])
        errors = int(parts[4]) if len(parts) == 6 else 0
        rows.append((calls, errors, name))
    rows.sort(reverse=True)
    total_calls = sum(r[0] for r in rows)
    for calls, errors, name in rows[:25]:
        lines.append(f"| {name} | {calls / traced:.2f} | {errors / traced:.2f} |")
    lines.append(f"| **total** | {total_calls / traced:.1f} | |")
    lines.append("")
    return lines


def run_profile(args: argparse.Namespace, argv: list[str]) -> int:
    lab = Lab(args.tmp, args.keep)
    started = time.monotonic()
    probe, waited = lab.create_probe(20.0)
    load = os.getloadavg()
    try:
        body = profile_drain(lab, args.tasks, args.rate, idle=True)
        body += profile_drain(lab, args.tasks, args.rate, idle=False)
        if not args.no_strace:
            body += strace_drain(lab, min(args.tasks, 2000))
        flame = args.flame or BENCH_DIR / "profile-flame.svg"
        body += flame_graph(lab, args.tasks, args.rate, flame)
    finally:
        lab.close()
    end_load = os.getloadavg()
    head = [
        "# spool worker profile",
        "",
        f"Command: `.venv/bin/python -m bench {' '.join(argv)}`; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; took {time.monotonic() - started:.0f} s; "
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at end "
        f"{end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}; file create p50 before the "
        f"drain {probe:.0f} us (waited {waited:.0f} s); code {code_version()}.",
        "",
    ]
    text = "\n".join(head + body)
    print(text)
    out = args.out or BENCH_DIR / "PROFILE.md"
    out.write_text(text)
    print(f"wrote {out}")
    return 0
