"""`spool metrics`: the spool in Prometheus text format, built with prometheus_client.

Gauges come from the directories (as `spool status`); counters and the duration histogram come
from the workers' counts (see stats), so they only grow, whatever `purge` removes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from spool import stats
from spool.inspect.status import spool_status

STATES = ("incoming", "delayed", "processing", "done", "failed", "cancelled")
COUNTER_HELP = {
    "done": "Tasks that ended in done/.",
    "failed": "Tasks that ended in failed/ after their last attempt.",
    "retried": "Failed attempts that were scheduled for a retry.",
    "rejected": "Files moved to failed/ as not runnable (invalid, unknown task, ...).",
    "recovered": "Tasks taken back from a worker that died.",
    "lost": "Attempts lost with their worker or handler process, then run again.",
    "cancelled": "Pending tasks cancelled by an operator (kept in failed/, not counted failed).",
    "rate_waits": "Starts that waited for a slot of their rate limit (no attempt).",
    "cap_waits": "Claimed tasks put back because their concurrency cap was full (no attempt).",
}


class SpoolCollector(Collector):
    """Collects the spool's metrics afresh on every scrape or write."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self) -> Iterator[Any]:
        status = spool_status(self.root)
        depth = GaugeMetricFamily(
            "spool_tasks", "Tasks per queue and state.", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "spool_oldest_waiting_seconds", "Age of the oldest task in incoming/.", labels=["queue"]
        )
        paused = GaugeMetricFamily(
            "spool_queue_paused", "1 while the queue is paused.", labels=["queue"]
        )
        for queue, counts in status["queues"].items():
            for state in STATES:
                depth.add_metric([queue, state], counts[state])
            oldest.add_metric([queue], counts["oldest_waiting_seconds"] or 0.0)
            paused.add_metric([queue], 1.0 if counts["paused"] else 0.0)
        yield from (depth, oldest, paused)
        yield GaugeMetricFamily("spool_workers", "Live workers.", value=len(status["workers"]))
        yield GaugeMetricFamily(
            "spool_workers_outcomes_waiting",
            "Live workers holding finished outcomes the disk refused (full, quota, I/O error);"
            " they claim nothing until those are written.",
            value=sum(1 for w in status["workers"] if w.get("outcomes_waiting")),
        )
        totals = stats.load_all(self.root)
        for what, help_text in COUNTER_HELP.items():
            counter = CounterMetricFamily(f"spool_tasks_{what}", help_text, labels=["queue"])
            for queue, queue_stats in sorted(totals.items()):
                counter.add_metric([queue], queue_stats.counts[what])
            yield counter
        removed = CounterMetricFamily(
            "spool_tasks_removed",
            "Finished task files deleted (purge, retention) or moved back (retry); state"
            " cancelled counts the cancelled among the failed.",
            labels=["queue", "state"],
        )
        for queue, queue_stats in sorted(totals.items()):
            for state in ("done", "failed", "cancelled"):
                removed.add_metric([queue, state], queue_stats.counts[f"{state}_removed"])
        yield removed
        durations = HistogramMetricFamily(
            "spool_task_duration_seconds", "Duration of finished attempts.", labels=["queue"]
        )
        for queue, queue_stats in sorted(totals.items()):
            durations.add_metric([queue], stats.histogram(queue_stats), queue_stats.duration_sum)
        yield durations


def registry_for(root: Path) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpoolCollector(root))
    return registry


def render(root: Path) -> str:
    """The metrics as Prometheus text."""
    return generate_latest(registry_for(root)).decode()


def write_textfile(root: Path, path: Path) -> None:
    """Write the metrics for node_exporter's textfile collector (atomically: tmp + rename)."""
    write_to_textfile(str(path), registry_for(root))
