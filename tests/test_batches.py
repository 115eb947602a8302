"""Batches: members counted once by O_EXCL markers, callbacks enqueued exactly once after the
last member, also with workers SIGKILLed (real workers, real kills)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from spool import Spool
from spool.cli import cli
from spool.errors import BatchExists, InvalidTask
from spool.faults import CRASH_ENV
from spool.manage import cancel
from spool.workflows.batches import settle_open
from tests.conftest import TEST_CONFIG, names, run_burst, wait_until

StartWorker = Callable[..., subprocess.Popen[bytes]]


def lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def invoke(spool_root: Path, *args: str) -> Result:
    argv = ["--root", str(spool_root), "--config", str(TEST_CONFIG), *args]
    return CliRunner().invoke(cli, argv)


def test_a_batch_sends_then_and_finally_once_after_every_member_is_done(
    app: Spool, spool_root: Path
) -> None:
    from tests.tasks import echo, noop

    batch = app.batch(
        [echo.s(i) for i in range(250)],
        then=echo.s().with_result(),
        on_failure=noop.s(),
        finally_=[noop.s()],
    )
    assert len(batch.task_ids) == 250
    assert app.batch_status(batch.id).pending == 250
    run_burst(spool_root)
    run_burst(spool_root)
    summary = app.wait(f"{batch.id}.then1", timeout=10)
    assert (summary["total"], summary["done"], summary["failed"]) == (250, 250, 0)
    assert app.state_of(f"{batch.id}.finally1") == "done"
    assert app.state_of(f"{batch.id}.fail1") is None
    assert app.show(f"{batch.id}.then1")["batch_callback"] == batch.id


def test_a_batch_with_a_member_failed_for_good_sends_on_failure_instead_of_then(
    app: Spool, spool_root: Path
) -> None:
    from tests.tasks import echo

    members = [echo.s(1), echo.s(2), {"task": "fail", "args": ["no"], "max_retries": 0}]
    batch = app.batch(members, then=echo.s("then"), on_failure=echo.s().with_result())
    run_burst(spool_root)
    run_burst(spool_root)
    summary = app.wait(f"{batch.id}.fail1", timeout=10)
    assert (summary["done"], summary["failed"], summary["pending"]) == (2, 1, 0)
    assert app.state_of(f"{batch.id}.then1") is None


def test_an_empty_batch_sends_its_callbacks_at_once(app: Spool) -> None:
    from tests.tasks import noop

    batch = app.batch([], then=noop.s())
    assert app.state_of(f"{batch.id}.then1") == "incoming"


def test_a_batch_id_is_never_used_twice(app: Spool) -> None:
    from tests.tasks import noop

    app.batch([noop.s()], batch_id="nightly")
    with pytest.raises(BatchExists):
        app.batch([noop.s()], batch_id="nightly")


def test_a_batch_refused_for_a_bad_member_field_leaves_no_record_and_its_id_free(
    app: Spool, spool_root: Path
) -> None:
    from tests.tasks import noop

    with pytest.raises(InvalidTask, match="task 2: field 'priority'"):
        app.batch([noop.s(), noop.s().set(priority=42)], batch_id="nightly")
    assert not (spool_root / ".batches" / "nightly").exists()
    app.batch([noop.s()], batch_id="nightly")  # not BatchExists


def test_enqueue_from_a_file_as_a_batch_and_follow_it_with_spool_batch(
    app: Spool, spool_root: Path, tmp_path: Path
) -> None:
    members = tmp_path / "mails.jsonl"
    members.write_text("".join(json.dumps({"task": "echo", "args": [i]}) + "\n" for i in range(5)))
    then = '{"task": "echo", "args": ["all sent"]}'
    enqueue = ["enqueue", "--from", str(members), "--batch", "mails"]
    result = invoke(spool_root, *enqueue, "--then", then)
    assert result.exit_code == 0, result.output
    shown = invoke(spool_root, "batch", "mails", "--json")
    assert json.loads(shown.output)["pending"] == 5
    run_burst(spool_root)
    run_burst(spool_root)
    assert app.wait("mails.then1", timeout=10) == "all sent"
    text = invoke(spool_root, "batch", "mails").output
    assert "5 of 5 ended" in text and "done 5  failed 0  pending 0" in text
    again = invoke(spool_root, *enqueue)
    assert again.exit_code == 1 and "exists" in again.output


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["batch", "nope"], 1, "unknown batch id"),
        (["enqueue", "noop", "--batch", "x"], 2, "--from"),
        (["enqueue", "--from", "-", "--batch", "x", "--finally", "{"], 2, "--finally"),
    ],
)
def test_batch_mistakes_on_the_command_line_are_one_line(
    spool_root: Path, args: list[str], code: int, says: str
) -> None:
    result = invoke(spool_root, *args)
    assert result.exit_code == code
    assert says in result.output


@pytest.mark.parametrize("point", ["before-follow-ups", "after-batch-marker", "after-follow-ups"])
def test_a_worker_killed_while_ending_the_last_member_leaves_one_callback(
    app: Spool,
    tmp_path: Path,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    point: str,
) -> None:
    from tests.tasks import record

    log = tmp_path / "runs.log"
    callback = record.s(str(log), "callback").set(queue="after")  # (not the first worker's:
    batch = app.batch([record.s(str(log), "member")], then=callback)  # it dies at `point`)
    monkeypatch.setenv(CRASH_ENV, f"{point}:{tmp_path / 'crashed'}")
    first = start_worker("--queue", "default")
    assert first.wait(timeout=20) == -signal.SIGKILL
    start_worker()
    wait_until(lambda: app.state_of(f"{batch.id}.then1") == "done", timeout=20)
    assert sorted(line.split()[0] for line in lines(log)) == ["callback", "member"]


def run_batch_with_kills(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: StartWorker, size: int, seed: int
) -> None:
    """A batch of `size` short tasks on 3 workers, one of them SIGKILLed at random moments:
    the callback runs once, after the last member ended."""
    from tests.tasks import record, record_slowly

    rng = random.Random(seed)
    log = tmp_path / f"batch-{seed}.log"
    members = [record_slowly.s(str(log), f"m{i}", 0.05) for i in range(size)]
    batch = app.batch(members, then=record.s(str(log), "cb"))
    workers = [start_worker() for _ in range(3)]
    callback = f"{batch.id}.then1"
    kills = 0
    while app.state_of(callback) != "done":
        victim = rng.randrange(len(workers))
        try:
            workers[victim].wait(timeout=rng.uniform(0.3, 1.5))  # a random moment
        except subprocess.TimeoutExpired:
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait(timeout=10)
            workers[victim] = start_worker()
            kills += 1
    print(f"batch of {size}: {kills} kills")
    assert [line.split()[0] for line in lines(log)].count("cb") == 1
    members_ended = max(float(app.show(i)["finished_at"]) for i in batch.task_ids)
    assert float(app.show(callback)["started_at"]) >= members_ended
    assert app.batch_status(batch.id).done == size
    wait_until(lambda: not names(spool_root / "default" / "processing"), timeout=10)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)


def test_a_batch_with_workers_killed_at_random_moments_calls_back_once_after_the_last_member(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: StartWorker
) -> None:
    run_batch_with_kills(app, spool_root, tmp_path, start_worker, 200, seed=1)


@pytest.mark.stress
def test_a_batch_of_a_thousand_with_three_workers_and_kills_calls_back_once(
    app: Spool, spool_root: Path, tmp_path: Path, start_worker: StartWorker
) -> None:
    for seed in range(3):
        run_batch_with_kills(app, spool_root, tmp_path, start_worker, 1000, seed=seed)


def test_a_cancelled_member_counts_as_failed_and_sends_on_failure(
    app: Spool, spool_root: Path
) -> None:
    from tests.tasks import echo

    batch = app.batch([echo.s(1), echo.s(2)], then=echo.s("then"), on_failure=echo.s("failed"))
    cancel(spool_root, batch.task_ids[1])
    run_burst(spool_root)
    run_burst(spool_root)
    assert app.wait(f"{batch.id}.fail1", timeout=10) == "failed"
    progress = app.batch_status(batch.id)
    assert (progress.done, progress.failed) == (1, 1)


def test_a_complete_batch_whose_last_ends_missed_each_other_is_settled_later(
    app: Spool, spool_root: Path
) -> None:
    from tests.tasks import echo

    batch = app.batch([echo.s(1), echo.s(2)], then=echo.s("cb"))
    ended = spool_root / ".batches" / batch.id / "ended" / "0"
    ended.mkdir(parents=True)
    for index in (0, 1):  # each end made its marker, and each listed its bucket too early
        (ended / f"{index}.done").touch()
    assert app.state_of(f"{batch.id}.then1") is None
    assert settle_open(spool_root) == 1
    assert app.state_of(f"{batch.id}.then1") == "incoming"
    assert settle_open(spool_root) == 0  # marked complete: passed by from now on


def test_an_eager_spool_runs_a_batch_and_its_callbacks_at_once(tmp_path: Path) -> None:
    eager = Spool(root=tmp_path, eager=True)

    @eager.task()
    def check(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    @eager.task()
    def report(summary: dict[str, int]) -> str:
        return f"{summary['done']} done, {summary['failed']} failed"

    batch = eager.batch([check.s(1), check.s(-1)], on_failure=report.s().with_result())
    assert eager.wait(f"{batch.id}.fail1") == "1 done, 1 failed"
    assert not (tmp_path / ".batches").exists()
