"""`spool metrics` and the workers' counts behind it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from spool import Spool, stats
from spool.cli import cli
from tests.conftest import PROJECT_DIR, TEST_CONFIG, run_burst


def scrape(spool_root: Path, *args: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = CliRunner().invoke(
        cli, ["--root", str(spool_root), "--config", str(TEST_CONFIG), "metrics", *args]
    )
    assert result.exit_code == 0, result.output
    return samples(result.stdout)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_show_depth_counters_and_durations(app: Spool, spool_root: Path) -> None:
    for n in range(3):
        app.enqueue("add", args=[n, 1])
    app.enqueue("fail", max_retries=0)
    app.enqueue("echo", delay=600)
    assert run_burst(spool_root).returncode == 0
    got = scrape(spool_root)
    q = (("queue", "default"),)
    assert got[("spool_tasks", (("queue", "default"), ("state", "done")))] == 3
    assert got[("spool_tasks", (("queue", "default"), ("state", "failed")))] == 1
    assert got[("spool_tasks", (("queue", "default"), ("state", "delayed")))] == 1
    assert got[("spool_tasks_done_total", q)] == 3
    assert got[("spool_tasks_failed_total", q)] == 1
    assert got[("spool_task_duration_seconds_count", q)] == 4
    assert got[("spool_task_duration_seconds_bucket", (("le", "+Inf"), ("queue", "default")))] == 4
    assert got[("spool_workers", ())] == 0


def test_counters_keep_counting_after_a_purge(app: Spool, spool_root: Path) -> None:
    app.enqueue("echo")
    assert run_burst(spool_root).returncode == 0
    runner = CliRunner()
    purged = runner.invoke(cli, ["--root", str(spool_root), "purge", "done", "--yes"])
    assert purged.exit_code == 0
    got = scrape(spool_root)
    assert got[("spool_tasks", (("queue", "default"), ("state", "done")))] == 0
    assert got[("spool_tasks_done_total", (("queue", "default"),))] == 1


def test_textfile_is_written_whole(app: Spool, spool_root: Path, tmp_path: Path) -> None:
    app.enqueue("echo")
    assert run_burst(spool_root).returncode == 0
    target = tmp_path / "spool.prom"
    scrape(spool_root, "--textfile", str(target))
    assert samples(target.read_text())[("spool_tasks_done_total", (("queue", "default"),))] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("spool.prom")] == ["spool.prom"]


def test_counts_of_dead_workers_are_folded_into_the_archive(spool_root: Path) -> None:
    directory = stats.stats_dir(spool_root)
    for worker_id, done in (("gone-1", 5), ("gone-2", 7)):
        counts = stats.WorkerStats(spool_root, worker_id)
        for _ in range(done):
            counts.record("default", "done", 0.01)
        counts.flush(0.0, force=True)
        os.utime(directory / f"{worker_id}.json", (0, 0))
    before = stats.load_all(spool_root)["default"].counts["done"]
    dead = stats.stale_files(spool_root, now=1e10)
    assert dead == {"gone-1", "gone-2"}
    stats.fold_dead(spool_root, dead)
    assert sorted(os.listdir(directory)) == [".archive.lock", stats.ARCHIVE]
    assert stats.load_all(spool_root)["default"].counts["done"] == before == 12
    archive = json.loads((directory / stats.ARCHIVE).read_text())
    assert archive["default"]["counts"]["done"] == 12


def test_cancelled_tasks_are_counted_as_cancelled_not_failed(app: Spool, spool_root: Path) -> None:
    app.enqueue("fail", max_retries=0)
    cancelled = app.enqueue("echo", delay=600)
    runner = CliRunner()
    argv = ["--root", str(spool_root), "--config", str(TEST_CONFIG), "cancel", cancelled]
    assert runner.invoke(cli, argv).exit_code == 0
    assert run_burst(spool_root).returncode == 0
    got = scrape(spool_root)
    q = (("queue", "default"),)
    assert got[("spool_tasks", (("queue", "default"), ("state", "failed")))] == 1
    assert got[("spool_tasks", (("queue", "default"), ("state", "cancelled")))] == 1
    assert got[("spool_tasks_failed_total", q)] == 1
    assert got[("spool_tasks_cancelled_total", q)] == 1


# ---- the Grafana dashboard shipped in conf/ --------------------------------------------------

SELECTOR = re.compile(r"\b(spool_[a-z_]+)\b(?:\{([^}]*)\})?")


def test_every_query_of_the_grafana_dashboard_names_a_metric_spool_exports(
    app: Spool, spool_root: Path
) -> None:
    app.enqueue("echo")
    app.enqueue("fail", args=["x"], max_retries=0)
    assert run_burst(spool_root).returncode == 0
    exported: dict[str, set[str]] = {}
    for (name, labels), _ in scrape(spool_root).items():
        exported.setdefault(name, set()).update(key for key, _ in labels)
    dashboard = json.loads((PROJECT_DIR / "conf" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs.append(dashboard["templating"]["list"][0]["query"]["query"])
    assert len(exprs) > 15
    for expr in exprs:
        found = SELECTOR.findall(expr)
        assert found, f"no spool metric in {expr!r}"
        for name, selector in found:
            assert name in exported, f"{expr!r}: spool metrics exports no {name}"
            for key in re.findall(r"(\w+)\s*=~?", selector):
                assert key in exported[name], f"{expr!r}: {name} has no label {key}"
    panels = [panel["title"] for panel in dashboard["panels"]]
    assert "Runtime p50 / p95" in panels and "Throughput per queue (per minute)" in panels
