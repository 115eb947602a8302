"""Workflows on several hosts (tests/hostbed.py: sshfs mounts from separate network namespaces,
no shared locks): a batch's callback once, a rate and a concurrency cap held across hosts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.hostbed import HostBed
from tests.test_caps import most_at_once
from tests.test_hosts import runs_of, server_app, start_worker, write_config
from tests.test_rates import most_in_a_window


@pytest.mark.parametrize("cache", [False, True], ids=["caches-off", "default-caches"])
def test_a_batch_drained_by_two_hosts_calls_back_once_after_the_last_member(
    hostbed: Callable[..., HostBed], tmp_path: Path, cache: bool
) -> None:
    bed = hostbed(hosts=2, cache=cache)
    config = write_config(tmp_path)
    app = server_app(bed, config)
    record = tmp_path / "runs.txt"
    members = [{"task": "record", "args": [str(record), f"m{i}"]} for i in range(300)]
    batch = app.batch(members, then={"task": "record", "args": [str(record), "callback"]})
    for host in (0, 1):
        start_worker(bed, host, config, tmp_path)
    callback = f"{batch.id}.then1"
    wait_until(lambda: app.state_of(callback) == "done", 120, 0.2)
    runs = runs_of(record)
    assert runs["callback"] == 1 and len(runs) == 301
    last_member = max(float(app.show(i)["finished_at"]) for i in batch.task_ids)
    assert float(app.show(callback)["started_at"]) >= last_member


def test_a_rate_and_a_cap_hold_across_two_hosts(
    hostbed: Callable[..., HostBed], tmp_path: Path
) -> None:
    bed = hostbed(hosts=2, cache=False)
    config = write_config(tmp_path)
    app = server_app(bed, config)
    log = tmp_path / "capped.log"
    rated = app.enqueue_many([{"task": "rated"} for _ in range(30)])
    capped = app.enqueue_many([{"task": "capped", "args": [str(log), 0.3]} for _ in range(8)])
    for host in (0, 1):
        start_worker(bed, host, config, tmp_path)
    wait_until(lambda: all(app.state_of(i) == "done" for i in rated + capped), 120, 0.2)
    starts = sorted(float(app.show(i)["started_at"]) for i in rated)
    assert most_in_a_window(starts, 1.0) <= 12
    assert (len(starts) - 1) / (starts[-1] - starts[0]) <= 11.0
    rows = [line.split() for line in log.read_text().split("\n")[:-1]]
    assert most_at_once([(float(a), float(b)) for a, b in rows]) <= 2
