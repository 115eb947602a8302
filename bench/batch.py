"""`python -m bench.batch [--tasks N] [--reps R]`: what a batch costs. N no-op tasks drained
by 2 workers, timed from the workers' start until the last task is done; then the same N tasks
as one batch with a callback, timed until the callback is done (every member's end creates its
O_EXCL marker and lists its bucket of 100; see workflows.batches). Prints both and the ratio
(issue 19's goal: under 2x)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench.core import Lab, count, done_path, noop_tasks, queue_dir, stop, wait_for
from spool import Spool


def drain(lab: Lab, n: int, batch: bool, workers: int) -> float:
    """Seconds from the workers' start until the last task (or the batch's callback) is done."""
    root = lab.root("batch" if batch else "plain")
    app = Spool(root=root)
    if batch:
        made = app.batch(noop_tasks(n), then={"task": "noop"})
        last = f"{made.id}.then1"
    else:
        last = app.enqueue_many(noop_tasks(n))[-1]
    t0 = time.time()
    procs = [lab.worker(root) for _ in range(workers)]
    try:
        wait_for(lambda: done_path(root, last).exists(), 900, 0.02, "the last task")
        wait_for(lambda: count(queue_dir(root, "done")) >= n, 900, 0.02, f"{n} done")
        elapsed = time.time() - t0
    finally:
        for proc in procs:
            stop(proc)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tmp", help="parent of the scratch directory")
    args = parser.parse_args(argv)
    lab = Lab(args.tmp, keep=False)
    plain: list[float] = []
    batched: list[float] = []
    try:
        for _ in range(args.reps):  # interleaved, so a slower minute hits both alike
            plain.append(drain(lab, args.tasks, False, args.workers))
            batched.append(drain(lab, args.tasks, True, args.workers))
    finally:
        lab.close()
    p, b = statistics.median(plain), statistics.median(batched)
    print(f"{args.tasks} no-op tasks, {args.workers} workers, median of {args.reps}:")
    print(f"  without a batch: {p:.2f} s ({args.tasks / p:.0f} tasks/s)  runs {plain}")
    print(f"  as one batch, until its callback is done: {b:.2f} s  runs {batched}")
    print(f"  ratio: {b / p:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
