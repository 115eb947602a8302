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
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from spool.fsio import sync_filesystem


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

    return drain(root, n, take)


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
    root: Path, n: int, take: Callable[[str], bool], unseen: Callable[[], int] = lambda: 0
) -> tuple[float, float, int]:
    """Offer every name in incoming/ to `take` until done/ (plus `unseen` ones not published
    yet) holds n; (first taken, last taken, how many this process took), wall clock."""
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
        for name in names:
            if not take(name):
                continue
            last = time.time()
            first = first or last
            handled += 1
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
    processing, tmp, done = root / "processing", root / "tmp", root / "done"
    owner = os.getpid()
    committer = GroupCommit(root)

    def take(name: str) -> bool:
        claimed = processing / f"{name}@{owner}"
        task = claim_and_read(root / "incoming" / name, claimed)
        if task is None:
            return False
        hidden = processing / f".{name}@{owner}"
        os.rename(claimed, hidden)
        task.update(attempts=1, result=None)
        staged = tmp / f".{name}@{owner}.done"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, json.dumps(task).encode())
        os.close(fd)
        committer.add(staged, done / name, hidden)
        return True

    taken = drain(root, n, take, lambda: len(committer.staged))
    committer.stop.set()
    committer.thread.join()
    return taken


if __name__ == "__main__":
    if sys.argv[1] in ("consume", "floor"):
        loop = consume if sys.argv[1] == "consume" else floor
        f, la, h = loop(Path(sys.argv[2]), int(sys.argv[3]))
        print(f"{f:.6f} {la:.6f} {h}", flush=True)
