"""Handlers of the peers' worker processes in `python -m bench compare` (see bench/peers.py).

Every peer runs the same handlers: `noop(tag)`, `stamp(tag)` and `sleep5(tag)` (5 ms).
Each appends one line `TAG WALLTIME PID` to `$BENCH_MARK_DIR/marks-PID` (one `os.write` on a
file opened once per process with O_APPEND, no fsync): `noop` and `sleep5` so the harness can
count finished tasks without a result backend, `stamp` so it has the handler's start time.
The line costs a few us.
"""

from __future__ import annotations

import os
import time

_fd: dict[int, int] = {}


def mark(tag: str) -> None:
    """Append `tag time pid` to this process's marks file (opened lazily, after any fork)."""
    now = time.time()
    pid = os.getpid()
    fd = _fd.get(pid)
    if fd is None:
        directory = os.environ["BENCH_MARK_DIR"]
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        fd = _fd[pid] = os.open(os.path.join(directory, f"marks-{pid}"), flags, 0o644)
    os.write(fd, f"{tag} {now:.6f} {pid}\n".encode())


def noop(tag: str = "-") -> None:
    mark(tag)


def stamp(tag: str) -> None:
    mark(tag)


def sleep5(tag: str = "-") -> None:
    mark(tag)
    time.sleep(0.005)


def read_marks(directory: str) -> list[tuple[str, float]]:
    """All (tag, handler start time) lines of the marks files in `directory`."""
    out: list[tuple[str, float]] = []
    for name in os.listdir(directory):
        if not name.startswith("marks-"):
            continue
        with open(os.path.join(directory, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    out.append((parts[0], float(parts[1])))
    return out


def count_marks(directory: str) -> int:
    total = 0
    for name in os.listdir(directory):
        if name.startswith("marks-"):
            with open(os.path.join(directory, name), "rb") as f:
                total += f.read().count(b"\n")
    return total
