"""The raw limit of a file spool in Python, for `python -m bench compare`.

Producer (in the harness process): for each task, write a file of the size of a spool task
file (~120 bytes of JSON) into `tmp/`, fsync it, rename it into `incoming/` and fsync
`incoming/` (durable on return, like `Spool.enqueue`); also the same loop without the fsyncs.

Consumers: `python -m bench.raw consume ROOT N` in 2 competing processes: list `incoming/`,
rename-claim each name into `processing/` (losing the race is FileNotFoundError: skip), read
and parse it (json), rename it into `done/`; no fsync. Each prints `first_claim last_finish
count` (wall clock) when `done/` holds N files.

The protocol floor: `python -m bench.raw floor ROOT N`, the same 2 competing processes doing
every file step spool takes per task, and nothing else (no handler process, no decision, no
log line): claim by rename, read and parse, hide the claim (rename to a dot-name), write the
outcome under a dot-name in tmp/, and in a second thread, every 50 ms, one syncfs, then each
outcome renamed into done/ and the claims of the group before unlinked. What a Python worker
keeping spool's on-disk contract can reach at most.

The floor with isolation: `python -m bench.raw isolated ROOT N`, the floor's 2 processes, each
running the tasks in a handler process of its own (as spool does, for its timeouts and for a
handler that crashes): up to 8 claimed tasks go to it in one line of JSON, it runs a no-op
function for each and sends a line back per task as it ends; then the outcome's file steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from spool.fsio import sync_filesystem

BATCH = 8  # names a consumer takes at a time (spool's default claim_batch)


def task_bytes(i: int) -> bytes:
    body = {
        "task": "noop",
        "args": [],
        "kwargs": {},
        "enqueued_at": time.time(),
        "id": f"20261122T000000{i:06d}-{uuid.uuid4().hex[:8]}",
        "attempts": 0,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def setup(root: Path) -> None:
    for d in ("tmp", "incoming", "processing", "done"):
        (root / d).mkdir(parents=True, exist_ok=True)


def produce(root: Path, n: int, durable: bool = True) -> float:
    """Enqueue n files one by one; returns the seconds taken."""
    setup(root)
    tmp, incoming = root / "tmp", root / "incoming"
    dfd = os.open(incoming, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t = time.perf_counter()
        for i in range(n):
            data = task_bytes(i)
            name = f"{i:09d}-{uuid.uuid4().hex[:8]}.json"
            src = tmp / name
            fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(src, incoming / name)
            if durable:
                os.fsync(dfd)
        return time.perf_counter() - t
    finally:
        os.close(dfd)


def consume(root: Path, n: int) -> tuple[float, float, int]:
    processing, done = root / "processing", root / "done"
    pid = os.getpid()

    def take(name: str) -> bool:
        claimed = processing / f"{name}.{pid}"
        if claim_and_read(root / "incoming" / name, claimed) is None:
            return False
        os.rename(claimed, done / name)
        return True

    return drain(root, n, one_by_one(take))


def one_by_one(take: Callable[[str], bool]) -> Callable[[list[str]], int]:
    return lambda names: sum(take(name) for name in names)


def claim_and_read(src: Path, claimed: Path) -> dict[str, object] | None:
    """Claim a file by renaming it, then read and parse it; None if another consumer won."""
    try:
        os.rename(src, claimed)
    except FileNotFoundError:
        return None
    with open(claimed, "rb") as f:
        task: dict[str, object] = json.loads(f.read())
    return task


def drain(
    root: Path, n: int, take: Callable[[list[str]], int], unseen: Callable[[], int] = lambda: 0
) -> tuple[float, float, int]:
    """Offer the names in incoming/, a chunk of BATCH at a time, to `take` (which returns how
    many it took) until done/ (plus `unseen` ones not published yet) holds n; (first taken,
    last taken, how many this process took), wall clock."""
    incoming, done = root / "incoming", root / "done"
    first = last = 0.0
    handled = 0
    while True:
        names = sorted(os.listdir(incoming))
        if not names:
            if len(os.listdir(done)) + unseen() >= n:
                break
            time.sleep(0.001)
            continue
        for at in range(0, len(names), BATCH):
            started = time.time()
            taken = take(names[at : at + BATCH])
            if not taken:
                continue
            last = time.time()
            first = first or started
            handled += taken
    return first, last, handled


class GroupCommit:
    """The floor's committer: every 50 ms, one syncfs, publish the group, unlink the claims of
    the group before."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staged: list[tuple[Path, Path, Path]] = []  # (staged, destination, hidden claim)
        self.published: list[Path] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def add(self, staged: Path, dest: Path, hidden: Path) -> None:
        with self.lock:
            self.staged.append((staged, dest, hidden))

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.round()
        self.round()
        self.round()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()

    def round(self) -> None:
        with self.lock:
            group, self.staged = self.staged, []
        if not group and not self.published:
            return
        sync_filesystem(self.root)
        for hidden in self.published:
            hidden.unlink()
        for staged, dest, _ in group:
            os.rename(staged, dest)
        self.published = [hidden for _, _, hidden in group]


def floor(root: Path, n: int) -> tuple[float, float, int]:
    """Every file step spool takes per task, and nothing else."""
    committer = GroupCommit(root)
    steps = FileSteps(root, committer)

    def take(name: str) -> bool:
        taken = steps.claim(name)
        if taken is None:
            return False
        claimed, task = taken
        task.update(attempts=1, result=None)
        steps.finish(name, claimed, task)
        return True

    taken = drain(root, n, one_by_one(take), lambda: len(committer.staged))
    committer.close()
    return taken


def isolated(root: Path, n: int) -> tuple[float, float, int]:
    """The floor, with each task run in a handler process (what a timeout and a crashing
    handler need): up to BATCH claimed tasks go to it in one line of JSON, and a line per
    task comes back as it ends."""
    committer = GroupCommit(root)
    steps = FileSteps(root, committer)
    command = [sys.executable, "-m", "bench.raw", "handler"]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    to_child, from_child = child.stdin, child.stdout

    def take(names: list[str]) -> int:
        batch = [(name, taken) for name in names if (taken := steps.claim(name)) is not None]
        if not batch:
            return 0
        to_child.write(json.dumps([task for _, (_, task) in batch]).encode() + b"\n")
        to_child.flush()
        for name, (claimed, task) in batch:
            reply = json.loads(from_child.readline())
            task.update(attempts=1, result=reply["result"])
            steps.finish(name, claimed, task)
        return len(batch)

    taken = drain(root, n, take, lambda: len(committer.staged))
    to_child.close()
    child.wait()
    committer.close()
    return taken


def handler() -> None:
    """The handler process of `isolated`: run each task of a line, reply a line per task."""
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        for task in json.loads(line):
            result = noop(*task["args"], **task["kwargs"])
            out.write(json.dumps({"id": task["id"], "result": result}).encode() + b"\n")
            out.flush()


def noop(*args: object, **kwargs: object) -> None:
    return None


class FileSteps:
    """spool's file steps for one task: claim by rename, read and parse; then hide the claim
    (a rename to a dot-name) and stage the outcome under a dot-name in tmp/ for the committer."""

    def __init__(self, root: Path, committer: GroupCommit) -> None:
        self.committer, self.owner = committer, os.getpid()
        self.incoming, self.processing = root / "incoming", root / "processing"
        self.tmp, self.done = root / "tmp", root / "done"

    def claim(self, name: str) -> tuple[Path, dict[str, object]] | None:
        """(the claim, the task), or None if another consumer won."""
        claimed = self.processing / f"{name}@{self.owner}"
        task = claim_and_read(self.incoming / name, claimed)
        return None if task is None else (claimed, task)

    def finish(self, name: str, claimed: Path, task: dict[str, object]) -> None:
        hidden = self.processing / f".{name}@{self.owner}"
        os.rename(claimed, hidden)
        staged = self.tmp / f".{name}@{self.owner}.done"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, json.dumps(task).encode())
        os.close(fd)
        self.committer.add(staged, self.done / name, hidden)


LOOPS = {"consume": consume, "floor": floor, "isolated": isolated}

if __name__ == "__main__":
    if sys.argv[1] == "handler":
        handler()
    elif sys.argv[1] in LOOPS:
        f, la, h = LOOPS[sys.argv[1]](Path(sys.argv[2]), int(sys.argv[3]))
        print(f"{f:.6f} {la:.6f} {h}", flush=True)
