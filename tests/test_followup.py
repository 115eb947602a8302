"""Chains: `then` / `then_on_failure` follow-ups, enqueued exactly once, also when a worker is
SIGKILLed between the parent's outcome and its follow-up (real workers, real kills)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from spool import Spool, UnknownTaskName
from spool.cli import cli
from spool.envelope import follow_up_id
from spool.faults import CRASH_ENV
from tests.conftest import TEST_CONFIG, drop_into, names, run_burst, wait_until

StartWorker = Callable[..., subprocess.Popen[bytes]]


def lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_a_chain_runs_its_steps_in_order_and_passes_the_result_when_asked(
    app: Spool, spool_root: Path
) -> None:
    from tests.tasks import add, echo

    ids = app.chain(add.s(1, 2), echo.s().with_result(), echo.s("plain"))
    assert ids[1] == follow_up_id(ids[0], "then", 1)
    assert run_burst(spool_root).returncode == 0
    assert run_burst(spool_root).returncode == 0  # (a burst ends when the queue is empty)
    assert run_burst(spool_root).returncode == 0
    assert [app.wait(i, timeout=10) for i in ids] == [3, 3, "plain"]
    assert app.show(ids[1])["parent"] == ids[0]


def test_then_on_failure_runs_once_with_the_error_after_the_parent_failed_for_good(
    app: Spool, spool_root: Path
) -> None:
    on_failure = [{"task": "echo", "pass_result": True}]
    parent = app.enqueue(
        "fail", ["it broke"], max_retries=0, then=[{"task": "noop"}], then_on_failure=on_failure
    )
    run_burst(spool_root)
    follow_up = follow_up_id(parent, "fail", 1)
    run_burst(spool_root)
    error = app.wait(follow_up, timeout=10)
    assert error["message"] == "it broke"
    assert app.state_of(follow_up_id(parent, "then", 1)) is None  # `then` only after done


def test_a_dropped_file_with_then_enqueues_its_follow_up_in_the_queue_it_names(
    app: Spool, spool_root: Path, start_worker: StartWorker
) -> None:
    incoming = spool_root / "default" / "incoming"
    incoming.mkdir(parents=True)
    then = [{"task": "echo", "args": ["after"], "queue": "later"}]
    drop_into(incoming, "job.json", json.dumps({"task": "noop", "then": then}).encode())
    start_worker()
    follow_up = follow_up_id("job", "then", 1)
    wait_until(lambda: app.state_of(follow_up) == "done", timeout=20)
    assert app.show(follow_up)["queue"] == "later"


def test_a_dropped_file_with_a_malformed_then_is_rejected_with_the_reason(
    app: Spool, spool_root: Path
) -> None:
    incoming = spool_root / "default" / "incoming"
    incoming.mkdir(parents=True)
    drop_into(incoming, "bad.json", json.dumps({"task": "noop", "then": [{"args": []}]}).encode())
    run_burst(spool_root)
    note = json.loads((spool_root / "default" / "failed" / "bad.error.json").read_text())
    assert "then[1]" in note["reason"] and "'task'" in note["reason"]


def test_enqueue_then_on_the_command_line_enqueues_the_follow_up(
    app: Spool, spool_root: Path
) -> None:
    then = '{"task": "echo", "pass_result": true}'
    argv = ["--root", str(spool_root), "--config", str(TEST_CONFIG)]
    result = CliRunner().invoke(cli, [*argv, "enqueue", "add", "2", "3", "--then", then])
    assert result.exit_code == 0, result.output
    parent = result.stdout.split()[0]
    run_burst(spool_root)
    run_burst(spool_root)
    assert app.wait(follow_up_id(parent, "then", 1), timeout=10) == 5


@pytest.mark.parametrize(
    ("value", "says"),
    [("{", "not valid JSON"), ('[{"task": "echo", "id": "x"}]', "no 'id'"), ("[3]", "object")],
)
def test_a_bad_then_on_the_command_line_is_a_usage_error_naming_the_option(
    spool_root: Path, value: str, says: str
) -> None:
    argv = ["--root", str(spool_root), "--config", str(TEST_CONFIG)]
    result = CliRunner().invoke(cli, [*argv, "enqueue", "noop", "--then", value])
    assert result.exit_code == 2
    assert "--then" in result.output and says in result.output
    assert names(spool_root / "default" / "incoming") == []


CRASH_POINTS = ["before-follow-ups", "after-follow-up-marker", "after-follow-ups"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_worker_killed_around_the_follow_up_leaves_it_enqueued_exactly_once(
    app: Spool,
    spool_root: Path,
    tmp_path: Path,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    point: str,
) -> None:
    log = tmp_path / "runs.log"
    then = [{"task": "record", "args": [str(log), "follow-up"], "queue": "after"}]
    parent = app.enqueue("record", [str(log), "parent"], then=then)
    flag = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, f"{point}:{flag}")
    first = start_worker("--queue", "default")  # (it dies at `point`, not in the follow-up)
    assert first.wait(timeout=20) == -signal.SIGKILL  # it killed itself at the point
    assert flag.exists() and app.state_of(parent) == "done"
    start_worker()  # recovers the dead worker's claim: replays the end
    follow_up = follow_up_id(parent, "then", 1)
    wait_until(lambda: app.state_of(follow_up) == "done", timeout=20)
    wait_until(lambda: not names(spool_root / "default" / "processing"), timeout=10)
    assert sorted(line.split()[0] for line in lines(log)) == ["follow-up", "parent"]
    assert names(spool_root / "default" / "done") == [f"{parent}.json"]
    assert names(spool_root / "after" / "done") == [f"{follow_up}.json"]


def run_chain_with_kills(app: Spool, tmp_path: Path, start_worker: StartWorker, seed: int) -> None:
    """A chain a -> b -> c of short tasks, the worker SIGKILLed at random moments until c is
    done: each step is enqueued once, and ran at least once and at most once per attempt (a
    killed attempt may have written its line before it died)."""
    from tests.tasks import record_slowly

    rng = random.Random(seed)
    log = tmp_path / f"chain-{seed}.log"
    steps = [record_slowly.s(str(log), name, 0.2) for name in ("a", "b", "c")]
    ids = app.chain(*steps)
    kills = 0
    while app.state_of(ids[2]) != "done":
        worker = start_worker()
        try:
            worker.wait(timeout=rng.uniform(0.3, 1.5))  # a random moment, not a synchronisation
        except subprocess.TimeoutExpired:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            kills += 1
    print(f"chain {seed}: {kills} kills")
    runs = [line.split()[0] for line in lines(log)]
    attempts = [int(app.show(i)["attempts"]) for i in ids]
    for name, attempts_of_step in zip(("a", "b", "c"), attempts, strict=True):
        # a second copy of a step would run again after the first ended: more runs than attempts
        assert 1 <= runs.count(name) <= attempts_of_step, (name, runs, attempts)
    done = spool_root_of(app) / "default" / "done"
    assert [n for n in names(done) if n.startswith(ids[0])] == [f"{i}.json" for i in ids]


def spool_root_of(app: Spool) -> Path:
    return app.root


def test_a_chain_with_its_worker_killed_at_random_moments_enqueues_each_step_once(
    app: Spool, tmp_path: Path, start_worker: StartWorker
) -> None:
    for seed in range(3):
        run_chain_with_kills(app, tmp_path, start_worker, seed)


@pytest.mark.stress
def test_fifty_chains_with_their_worker_killed_at_random_moments_enqueue_each_step_once(
    app: Spool, tmp_path: Path, start_worker: StartWorker
) -> None:
    for seed in range(50):
        run_chain_with_kills(app, tmp_path, start_worker, 100 + seed)


def test_a_follow_up_naming_a_task_no_worker_serves_is_refused_before_anything_is_written(
    app: Spool, spool_root: Path
) -> None:
    run_burst(spool_root)  # a worker published the tasks it serves
    argv = ["--root", str(spool_root), "--config", str(TEST_CONFIG)]
    nested = '{"task": "echo", "then": [{"task": "ecko"}]}'
    result = CliRunner().invoke(cli, [*argv, "enqueue", "noop", "--then", nested])
    assert result.exit_code == 2 and "unknown task 'ecko'" in result.output
    with pytest.raises(UnknownTaskName):
        app.batch([{"task": "noop"}], then={"task": "nope"})
    assert names(spool_root / "default" / "incoming") == []


def test_an_eager_spool_runs_a_chain_at_once_with_the_same_ids(tmp_path: Path) -> None:
    eager = Spool(root=tmp_path, eager=True)

    @eager.task()
    def double(x: int) -> int:
        return 2 * x

    ids = eager.chain(double.s(3), double.s().with_result(), double.s().with_result())
    assert [eager.wait(i) for i in ids] == [6, 12, 24]
    assert ids[2] == follow_up_id(ids[1], "then", 1)
