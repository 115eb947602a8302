"""Files that are not JSON (yet): `python -m bench.in_place [--broken N] [--writes K]`.

1. broken: N cut-off task files dropped at once (fresh mtimes, so each must wait out the settle
   time of spool.settle); time for a burst worker, start-up included, to reject them all.
2. in place: K task files written straight into incoming/, a byte per 20 ms; time from the
   last byte to the task's file in done/, with one resident worker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG = PROJECT_DIR / "bench" / "spool.toml"
TASK = b'{"task": "noop"}'


def spool(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "spool", "--root", str(root), "--config", str(CONFIG), *args]


def broken(root: Path, n: int) -> None:
    incoming = root / "default" / "incoming"
    incoming.mkdir(parents=True)
    for i in range(n):
        staging = incoming / f".b{i}.part"
        staging.write_bytes(b'{"task": "noop", "args": [')
        os.rename(staging, incoming / f"b{i}.json")
    start = time.monotonic()
    subprocess.run(spool(root, "worker", "--burst"), cwd=PROJECT_DIR, check=True, stderr=-3)
    took = time.monotonic() - start
    rejected = sum(1 for n in os.listdir(root / "default" / "failed") if n.endswith(".error.json"))
    print(f"broken: {rejected:,} of {n:,} cut-off files rejected in {took:.2f} s (burst worker)")


def in_place(root: Path, k: int) -> None:
    incoming, done = root / "default" / "incoming", root / "default" / "done"
    incoming.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(spool(root, "worker"), cwd=PROJECT_DIR, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)  # the worker is up
        lags = []
        for i in range(k):
            with open(incoming / f"slow{i}.json", "wb") as out:
                for j in range(len(TASK)):
                    if j:
                        time.sleep(0.02)
                    out.write(TASK[j : j + 1])
                    out.flush()
                end = time.monotonic()  # the last byte is in
            deadline = end + 30
            while not (done / f"slow{i}.json").exists():
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench.in_place: slow{i}.json not done within 30 s")
                time.sleep(0.001)
            lags.append((time.monotonic() - end) * 1000)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(
        f"in place: last byte -> done, p50 {statistics.median(lags):.0f} ms, "
        f"max {max(lags):.0f} ms over {k} files (a byte per 20 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.in_place")
    parser.add_argument("--broken", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broken(Path(tmp) / "a", args.broken)
        in_place(Path(tmp) / "b", args.writes)


if __name__ == "__main__":
    main()
