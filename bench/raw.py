"""The raw limit of a file spool in Python, for `python -m bench compare`.

Producer (in the harness process): for each task, write a file of the size of a spool task
file (~120 bytes of JSON) into `tmp/`, fsync it, rename it into `incoming/` and fsync
`incoming/` (durable on return, like `Spool.enqueue`); also the same loop without the fsyncs.

Consumers: `python -m bench.raw consume ROOT N` in 2 competing processes: list `incoming/`,
rename-claim each name into `processing/` (losing the race is FileNotFoundError: skip), read
and parse it (json), rename it into `done/`; no fsync. Each prints `first_claim last_finish
count` (wall clock) when `done/` holds N files.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path


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
    incoming, processing, done = root / "incoming", root / "processing", root / "done"
    pid = os.getpid()
    first = last = 0.0
    handled = 0
    while True:
        names = sorted(os.listdir(incoming))
        if not names:
            if len(os.listdir(done)) >= n:
                break
            time.sleep(0.001)
            continue
        for name in names:
            claimed = processing / f"{name}.{pid}"
            try:
                os.rename(incoming / name, claimed)
            except FileNotFoundError:
                continue
            if not first:
                first = time.time()
            with open(claimed, "rb") as f:
                json.loads(f.read())
            os.rename(claimed, done / name)
            handled += 1
            last = time.time()
    return first, last, handled


if __name__ == "__main__":
    if sys.argv[1] == "consume":
        f, la, h = consume(Path(sys.argv[2]), int(sys.argv[3]))
        print(f"{f:.6f} {la:.6f} {h}", flush=True)
