"""What the task manifest costs a producer: `python -m bench.manifest [--runs N] [--tasks N]`.

Each figure is measured on a root without a manifest and on one where three workers have
published the bench's tasks (bench/tasks.py), alternating the two, medians of `--reps`:

1. `spool enqueue noop`: wall time of the command, start-up included (`--runs` times each);
2. `Spool.enqueue("noop")` one by one in a long-running process (durable each): tasks/s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spool import Spool
from spool.manifest import publish

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG = PROJECT_DIR / "bench" / "spool.toml"


def publish_bench_tasks(root: Path) -> None:
    from bench import tasks

    described = {name: task.describe() for name, task in tasks.app.registry.tasks.items()}
    for worker in ("w1", "w2", "w3"):
        publish(root, worker, described, time.time(), is_worker=True,
                is_live=lambda w: True, grace_seconds=600.0)  # fmt: skip


def cli_seconds(root: Path, runs: int) -> float:
    command = [sys.executable, "-m", "spool", "--root", str(root), "--config", str(CONFIG)]
    took = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([*command, "enqueue", "noop"], cwd=PROJECT_DIR, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        took.append(time.perf_counter() - start)
    return statistics.median(took)


def api_rate(root: Path, n: int) -> float:
    app = Spool(root=root)
    app.enqueue("noop")  # the directories first
    start = time.perf_counter()
    for _ in range(n):
        app.enqueue("noop")
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.manifest", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="CLI runs per repetition")
    parser.add_argument("--tasks", type=int, default=2000, help="API enqueues per repetition")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    figures: dict[str, list[float]] = {k: [] for k in ("cli0", "cli1", "api0", "api1")}
    with tempfile.TemporaryDirectory(prefix="spool-bench-manifest-") as tmp:
        for rep in range(args.reps):
            plain, published = Path(tmp, f"plain{rep}"), Path(tmp, f"published{rep}")
            publish_bench_tasks(published)
            figures["cli0"].append(cli_seconds(plain, args.runs))
            figures["cli1"].append(cli_seconds(published, args.runs))
            figures["api0"].append(api_rate(plain, args.tasks))
            figures["api1"].append(api_rate(published, args.tasks))
    med = {k: statistics.median(v) for k, v in figures.items()}
    print(f"spool enqueue (wall, median): no manifest {med['cli0'] * 1000:.1f} ms, "
          f"manifest {med['cli1'] * 1000:.1f} ms ({med['cli1'] / med['cli0']:.3f}x)")  # fmt: skip
    print(f"Spool.enqueue one by one: no manifest {med['api0']:,.0f}/s, "
          f"manifest {med['api1']:,.0f}/s "
          f"({med['api0'] / med['api1']:.3f}x the time per task)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
