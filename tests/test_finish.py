"""The decisions on an attempt (see spool.decision), with the time passed in: retries spent
by failed attempts only, lost attempts bounded by max_lost, at_most_once."""

from __future__ import annotations

from spool.decision import RetryPolicy, after_attempt, lose
from spool.errors import error_dict
from spool.execute import Outcome

NOW = 1_800_000_000.0
WORKER = "host-1-abc"


def lost_at(now: float) -> Outcome:
    return Outcome(False, now - 2, now, error=error_dict("WorkerLost", "worker died"), lost=True)


def failed_at(now: float) -> Outcome:
    return Outcome(False, now - 1, now, error=error_dict("ValueError", "bad"))


def test_a_lost_attempt_is_counted_in_attempts_and_lost_and_runs_again() -> None:
    state, task = lose(
        {"id": "t", "task": "x", "attempts": 0}, WORKER, lost_at(NOW), RetryPolicy(0)
    )
    assert state == "lost"
    assert (task["attempts"], task["lost"]) == (1, 1)
    assert task["history"] == [
        {"attempt": 1, "worker": WORKER, "started_at": NOW - 2, "finished_at": NOW,
         "error": error_dict("WorkerLost", "worker died"), "lost": True}
    ]  # fmt: skip
    assert "error" not in task and "finished_at" not in task


def test_the_max_lost_th_loss_sends_the_task_to_failed_with_the_reason() -> None:
    task = {"id": "t", "task": "x", "attempts": 2, "lost": 2}
    state, final = lose(task, WORKER, lost_at(NOW), RetryPolicy(5, max_lost=3))
    assert state == "failed"
    assert (final["attempts"], final["lost"], final["finished_at"]) == (3, 3, NOW)
    assert final["error"]["type"] == "WorkerLost"
    assert final["error"]["message"] == "worker died; 3 attempts lost (max_lost 3)"


def test_an_at_most_once_task_fails_at_its_first_loss() -> None:
    state, final = lose(
        {"id": "t", "task": "x"}, WORKER, lost_at(NOW), RetryPolicy(3, at_most_once=True)
    )
    assert state == "failed"
    assert "at_most_once" in final["error"]["message"]


def test_lost_attempts_do_not_spend_max_retries() -> None:
    policy = RetryPolicy(1)
    assert not policy.exhausted(attempts=3, lost=2)  # 1 failed: its one retry is left
    assert policy.exhausted(attempts=3, lost=1)  # 2 failed: first attempt and its retry
    assert policy.exhausted(attempts=2, lost=0)
    assert RetryPolicy(0).exhausted(attempts=4, lost=3)  # no retries: the one failure ends it


def test_a_failed_attempt_after_lost_ones_retries_on_its_own_count() -> None:
    policy = RetryPolicy(1, backoff_seconds=10.0, jitter=False)
    task = {"id": "t", "task": "x", "attempts": 2, "lost": 2}
    state, final = after_attempt(task, failed_at(NOW), policy, WORKER)
    assert state == "retry"
    assert final["retry_at"] == NOW + 10.0  # the first failure's backoff, not the third's
    state, final = after_attempt(final, failed_at(NOW + 20), policy, WORKER)
    assert state == "failed" and (final["attempts"], final["lost"]) == (4, 2)


def test_a_handler_process_lost_mid_attempt_is_due_again_at_once() -> None:
    state, final = after_attempt({"id": "t", "task": "x"}, lost_at(NOW), RetryPolicy(0), WORKER)
    assert state == "lost" and final["retry_at"] == NOW
    assert "worker" not in final and "started_at" not in final


def test_a_task_done_after_a_loss_keeps_the_lost_attempt_in_its_history() -> None:
    _, lost = lose({"id": "t", "task": "x"}, WORKER, lost_at(NOW), RetryPolicy(0))
    ok = Outcome(True, NOW + 1, NOW + 2, result=5)
    state, final = after_attempt(lost, ok, RetryPolicy(0), WORKER)
    assert state == "done"
    assert (final["attempts"], final["lost"], final["result"]) == (2, 1, 5)
    assert len(final["history"]) == 1
