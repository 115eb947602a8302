"""The overview of a spool, as the dashboard's first page and GET /api/queues show it.

It is `spool status` (spool.inspect.status) with more per queue: tasks finished per minute,
runtimes (p50, p95) per minute, why and since when the queue is paused; and per worker, the
tasks it runs now (its claims in processing/, named by the file's worker part).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from spool.inspect.paging import PageQuery, task_page
from spool.inspect.status import queue_status, spool_status
from spool.layout import QueueDirs, split_processing
from spool.stats import load_all
from spool.web.requests import PAGE_SIZE_MAX, WebState


def running_by_worker(state: WebState, queues: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Each worker's claims in processing/: {worker id: [{queue, id, task, file}]}."""
    root = state.settings.root
    running: dict[str, list[dict[str, Any]]] = {}
    for queue in queues:
        dirs = QueueDirs(root, queue)
        page = task_page(state.lister, dirs, PageQuery("processing", size=PAGE_SIZE_MAX))
        for item in page.rows:
            parts = split_processing(item["file"])
            if parts is None:
                continue
            worker = parts[1]
            running.setdefault(worker, []).append(
                {
                    "queue": queue,
                    "id": item["id"],
                    "task": item["task"],
                    "file": parts[0],
                    "attempt": item.get("attempt"),
                    "running_seconds": item.get("running_seconds"),
                }
            )
    return running


def overview(state: WebState) -> dict[str, Any]:
    """GET /api/queues: spool status, plus throughput per queue and what each worker runs."""
    totals = load_all(state.settings.root)  # the workers' counts, read once for both
    state.rates.sample(totals=totals)
    data = spool_status(state.settings.root, totals=totals)
    for queue, counts in data["queues"].items():
        counts["finished_per_minute"] = state.rates.series(queue)
        counts["runtime_per_minute"] = state.rates.runtimes(queue)  # [p50, p95] or null
        counts["paused_info"] = counts["pause"]  # the pause marker, read once by spool_status
    running = running_by_worker(state, data["queues"])
    for worker in data["workers"]:
        worker["running"] = running.get(str(worker["id"]), [])
    return data


def queue_counts(state: WebState, dirs: QueueDirs) -> dict[str, Any]:
    """The queue page's counts: `spool status` of this queue alone. The throughput is sampled
    as the overview does, so its charts keep their minutes while only this page is open."""
    totals = load_all(state.settings.root)
    state.rates.sample(totals=totals)
    return queue_status(dirs, time.time(), totals.get(dirs.name))
