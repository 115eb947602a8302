"""Rate limits: slot files created with O_EXCL, held across real workers; a task over its rate
waits (no attempt) and the starts per second stay within the limit."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from spool import Spool
from spool.config import load_settings
from spool.envelope import Rate
from spool.errors import ConfigError
from spool.workflows.rates import Limit, reserve, starts_in
from tests.conftest import TEST_CONFIG, drop_into, names, run_burst, wait_until

StartWorker = Callable[..., subprocess.Popen[bytes]]


def started(app: Spool, ids: list[str]) -> list[float]:
    return sorted(float(app.show(i)["started_at"]) for i in ids)


def most_in_a_window(starts: list[float], seconds: float) -> int:
    """The most starts in any window of `seconds` (each window opening at a start)."""
    return max(sum(1 for t in starts[i:] if t < s + seconds) for i, s in enumerate(starts))


def test_one_slot_has_one_owner_and_the_next_free_slot_is_reserved_ahead(tmp_path: Path) -> None:
    limit = Limit("api", Rate(10, 1.0))
    now = 1000.05  # in slot 10000 (each 0.1 s)
    first = reserve(tmp_path, limit, "a", now)
    second = reserve(tmp_path, limit, "b", now)
    assert first.start_at == now
    assert second.start_at == pytest.approx(1000.1)  # slot 10001, a wait in memory
    assert starts_in(tmp_path, "api", limit.rate, 1000.0, 1000.15) == 2


def test_with_every_slot_of_the_horizon_taken_a_task_is_told_when_to_look_again(
    tmp_path: Path,
) -> None:
    limit = Limit("slow", Rate(1, 60.0))  # one start a minute
    assert reserve(tmp_path, limit, "a", 120.5).start_at == 120.5
    again = reserve(tmp_path, limit, "b", 121.0, horizon=2.0)
    assert again.start_at is None
    assert again.retry_at == pytest.approx(178.0)  # the next slot (180) within the horizon


def test_a_rate_of_ten_a_second_holds_across_four_workers_and_a_wait_is_no_attempt(
    app: Spool, start_worker: StartWorker
) -> None:
    ids = app.enqueue_many([{"task": "rated"} for _ in range(60)])
    for _ in range(4):
        start_worker()
    wait_until(lambda: all(app.state_of(i) == "done" for i in ids[-5:]), timeout=40)
    wait_until(lambda: all(app.state_of(i) == "done" for i in ids), timeout=10)
    starts = started(app, ids)
    # one start per slot of 0.1 s; a start recorded late in its slot may sit beside the next
    assert most_in_a_window(starts, 1.0) <= 12
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    assert 9.0 <= rate <= 11.0, rate
    assert {int(app.show(i)["attempts"]) for i in ids} == {1}
    wait_until(lambda: app.status()["queues"]["default"].get("rate_waits", 0) > 0, timeout=10)


def test_tasks_that_share_a_rate_key_share_one_limit(
    app: Spool, spool_root: Path, start_worker: StartWorker
) -> None:
    limited = {"rate": "5/s", "rate_key": "partner-api"}
    tasks = [{"task": name, **limited} for name in ("noop", "echo") for _ in range(10)]
    ids = app.enqueue_many(tasks)
    start_worker()
    start_worker()
    wait_until(lambda: all(app.state_of(i) == "done" for i in ids), timeout=30)
    assert most_in_a_window(started(app, ids), 1.0) <= 7


def test_a_queue_rate_in_the_config_limits_every_task_of_the_queue(
    spool_root: Path, tmp_path: Path, start_worker: StartWorker
) -> None:
    config = tmp_path / "spool.toml"
    config.write_text(TEST_CONFIG.read_text() + '\n[queues.partner]\nrate = "4/s"\n')
    app = Spool(settings=load_settings(str(spool_root), str(config), env={}))
    ids = app.enqueue_many([{"task": "noop"} for _ in range(12)], queue="partner")
    start_worker(config=config)
    start_worker(config=config)
    wait_until(lambda: all(app.state_of(i) == "done" for i in ids), timeout=30)
    starts = started(app, ids)
    assert most_in_a_window(starts, 1.0) <= 6
    assert starts[-1] - starts[0] >= 2.5  # 12 starts at 4 a second


def test_a_burst_worker_waits_for_the_slots_of_its_rated_tasks(
    app: Spool, spool_root: Path
) -> None:
    ids = app.enqueue_many([{"task": "rated"} for _ in range(25)])
    assert run_burst(spool_root).returncode == 0
    assert names(spool_root / "default" / "done") == sorted(f"{i}.json" for i in ids)


def test_a_task_file_with_a_malformed_rate_is_rejected_with_the_reason(spool_root: Path) -> None:
    incoming = spool_root / "default" / "incoming"
    incoming.mkdir(parents=True)
    drop_into(incoming, "r.json", json.dumps({"task": "noop", "rate": "fast"}).encode())
    run_burst(spool_root)
    note = json.loads((spool_root / "default" / "failed" / "r.error.json").read_text())
    assert "'rate'" in note["reason"] and "10/s" in note["reason"]


def test_a_malformed_rate_in_the_config_or_on_a_task_is_a_config_error(
    spool_root: Path, tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[queues.partner]\nrate = "lots"\n')
    with pytest.raises(ConfigError, match=r"queues.partner.*rate"):
        load_settings(str(spool_root), str(config), env={})
    with pytest.raises(ConfigError, match="rate="):
        Spool(root=spool_root).task(rate="ten a second")(lambda: None)


@pytest.mark.stress
@pytest.mark.parametrize("seconds", [30, 60])
def test_ten_a_second_with_four_workers_starts_ten_a_second_within_ten_percent(
    app: Spool, start_worker: StartWorker, seconds: int
) -> None:
    ids = app.enqueue_many([{"task": "rated"} for _ in range(10 * seconds + 100)])
    for _ in range(4):
        start_worker()
    wait_until(lambda: all(app.state_of(i) == "done" for i in ids[-5:]), timeout=seconds + 60)
    starts = started(app, ids)
    counted = sum(1 for t in starts if starts[0] + 5 <= t < starts[0] + 5 + seconds)
    most = most_in_a_window(starts, 1.0)
    print(f"rate 10/s, 4 workers: {counted} starts in {seconds} s (max {most} in 1 s)")
    assert 9 * seconds <= counted <= 11 * seconds, counted
