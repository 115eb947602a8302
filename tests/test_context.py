"""Handlers that talk back: spool.current(), spool.Retry, spool.Fail (see spool.context), with
real worker and handler processes; eager mode; the decision in the history and the event."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import spool
from spool import Spool
from spool.context import MAX_RELEASES
from spool.decision import RetryPolicy, decide
from spool.events import build_event
from spool.execute import Outcome
from spool.layout import QueueDirs, split_delayed
from spool.manifest import Catalog
from tests.conftest import names, wait_until

Starter = Callable[..., object]


def state_is(app: Spool, task_id: str, state: str) -> Callable[[], bool]:
    return lambda: app.state_of(task_id) == state


def test_retry_after_puts_the_task_in_delayed_for_that_long_then_it_runs_again(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    task_id = app.enqueue("retry_later", args=[2.0])
    start_worker()
    wait_until(state_is(app, task_id, "delayed"))
    delayed = QueueDirs(spool_root, "default").delayed
    (entry,) = names(delayed)
    parts = split_delayed(entry)
    assert parts is not None
    shown = app.show(task_id)
    (first,) = shown["history"]
    assert first["decision"] == {"action": "retry", "reason": "mailbox busy", "after": 2.0}
    assert first["error"]["type"] == "Retry"
    assert parts[0] / 1e6 == pytest.approx(first["finished_at"] + 2.0, abs=0.001)
    wait_until(state_is(app, task_id, "done"), timeout=15)
    done = app.show(task_id)
    assert done["result"] == 2
    assert done["started_at"] >= first["finished_at"] + 2.0 - 0.01


def test_a_retry_with_count_false_does_not_spend_a_retry(app: Spool, start_worker: Starter) -> None:
    task_id = app.enqueue("retry_later", args=[0.05], kwargs={"count": False}, max_retries=0)
    start_worker()
    wait_until(state_is(app, task_id, "done"), timeout=15)
    shown = app.show(task_id)
    assert (shown["attempts"], shown["released"], shown["result"]) == (2, 1, 2)
    assert shown["history"][0]["decision"]["action"] == "release"


def test_releases_are_bounded_then_a_release_spends_a_retry(
    app: Spool, start_worker: Starter
) -> None:
    task_id = app.enqueue("release_forever")  # max_retries=0
    start_worker()
    wait_until(state_is(app, task_id, "failed"), timeout=60)
    shown = app.show(task_id)
    assert shown["released"] == MAX_RELEASES
    assert shown["attempts"] == MAX_RELEASES + 1
    assert shown["history"][-1]["decision"] == {
        "action": "fail",
        "reason": "no retries left (max_retries 0)",
    }


def test_fail_sends_the_task_to_failed_after_one_attempt(app: Spool, start_worker: Starter) -> None:
    task_id = app.enqueue("fail_for_good", args=["invalid address"])  # max_retries 3
    start_worker()
    wait_until(state_is(app, task_id, "failed"))
    shown = app.show(task_id)
    assert shown["attempts"] == 1
    assert shown["error"]["type"] == "Fail"
    assert shown["error"]["message"] == "invalid address"
    assert shown["history"][0]["decision"] == {
        "action": "fail",
        "reason": "the handler raised Fail: invalid address",
    }


def test_a_retried_attempt_sees_its_context(app: Spool, start_worker: Starter) -> None:
    (task_id,) = app.enqueue_many([{"task": "show_context", "customer": "acme", "timeout": 30}])
    start_worker()
    wait_until(state_is(app, task_id, "done"), timeout=15)
    shown = app.show(task_id)
    seen = shown["result"]
    assert (seen["id"], seen["queue"], seen["task"]) == (task_id, "default", "show_context")
    assert (seen["attempt"], seen["max_retries"], seen["retries_left"]) == (2, 3, 2)
    assert seen["enqueued_at"] == shown["enqueued_at"]
    assert seen["deadline"] == pytest.approx(shown["started_at"] + 30, abs=1.0)
    assert seen["worker"] == shown["worker"]
    assert seen["extra"] == {"customer": "acme"}


def test_current_outside_a_handler_says_so_in_one_line() -> None:
    with pytest.raises(spool.NoContext) as raised:
        spool.current()
    assert isinstance(raised.value, spool.SpoolError)
    assert "\n" not in str(raised.value)
    with pytest.raises(spool.NoContext):
        spool.progress(1, 2)


def test_eager_mode_gives_a_handler_the_same_context(tmp_path: Path) -> None:
    eager = Spool(root=tmp_path, eager=True)

    @eager.task(queue="mail", max_retries=2)
    def who() -> dict[str, object]:
        spool.progress(1, 1, message="only one")
        return spool.current().to_json()

    seen = eager.wait(eager.enqueue_many([{"task": "who", "tenant": "t1"}])[0])
    assert (seen["task"], seen["queue"], seen["attempt"], seen["worker"]) == (
        "who",
        "mail",
        1,
        "eager",
    )
    assert seen["max_retries"] == 2
    assert seen["extra"] == {"tenant": "t1"}
    with pytest.raises(spool.NoContext):  # (left when the handler returned)
        spool.current()


def failed_outcome(kind: str, kinds: tuple[str, ...] = (), asked: dict[str, object] | None = None):
    now = time.time()
    error = {"type": kind, "message": "m", "traceback": ""}
    return Outcome(False, now, now, error=error, kinds=kinds or (kind,), asked=asked)


def test_retry_on_retries_only_the_named_types_and_their_subclasses() -> None:
    policy = RetryPolicy(3, retry_on=("OSError", "TimeoutError"))
    refused = decide({}, failed_outcome("ValueError", ("ValueError", "Exception")), policy)
    assert refused.action == "fail"
    assert refused.reason == "ValueError is not retried (retry_on: OSError, TimeoutError)"
    sub = ("ConnectionRefusedError", "ConnectionError", "OSError", "Exception")
    assert decide({}, failed_outcome(sub[0], sub), policy).action == "retry"
    timeout = failed_outcome("Timeout", ("Timeout", "TimeoutError"))  # (see execute)
    assert decide({}, timeout, policy).action == "retry"


def test_no_retry_on_fails_at_once_but_an_explicit_retry_wins() -> None:
    policy = RetryPolicy(3, no_retry_on=("ValueError",))
    assert decide({}, failed_outcome("ValueError"), policy).reason == (
        "ValueError is not retried (no_retry_on ValueError)"
    )
    asked = {"action": "retry", "after": 5.0, "reason": "later", "count": True}
    retried = decide({}, failed_outcome("Retry", asked=asked), policy)
    assert (retried.action, retried.after, retried.reason) == ("retry", 5.0, "later")


def test_the_completion_event_carries_the_decision_and_its_reason() -> None:
    decision = {"action": "fail", "reason": "the handler raised Fail: no"}
    task = {
        "id": "t1",
        "task": "x",
        "attempts": 1,
        "error": {"type": "Fail", "message": "no"},
        "history": [{"attempt": 1, "decision": decision}],
    }
    event = build_event("default", task, "failed", 1.0, 2.0)
    assert event["decision"] == decision


def test_a_handler_traceback_leaves_out_spool_frames(app: Spool, start_worker: Starter) -> None:
    task_id = app.enqueue("fail", args=["boom"])
    start_worker()
    wait_until(lambda: len(app.show(task_id).get("history", [])) >= 1)
    tb = app.show(task_id)["history"][0]["error"]["traceback"]
    assert "tests/tasks.py" in tb
    assert "run_handler" not in tb
    assert os.sep + "execute.py" not in tb


@pytest.mark.parametrize(
    ("task", "kind", "attempts", "reason"),
    [
        ("only_os_errors_retried", "ConnectionRefusedError", 2, "no retries left (max_retries 1)"),
        (
            "only_os_errors_retried",
            "ValueError",
            1,
            "ValueError is not retried (retry_on: OSError, TimeoutError)",
        ),
        ("value_errors_not_retried", "ValueError", 1, "ValueError is not retried (no_retry_on "
         "ValueError)"),
        ("value_errors_not_retried", "RuntimeError", 2, "no retries left (max_retries 1)"),
    ],
)  # fmt: skip
def test_retry_on_and_no_retry_on_choose_which_errors_are_retried(
    app: Spool, start_worker: Starter, task: str, kind: str, attempts: int, reason: str
) -> None:
    task_id = app.enqueue(task, args=[kind])
    start_worker()
    wait_until(state_is(app, task_id, "failed"))
    shown = app.show(task_id)
    assert shown["attempts"] == attempts
    assert shown["history"][-1]["decision"] == {"action": "fail", "reason": reason}


def test_a_task_file_names_the_errors_it_does_not_retry(
    app: Spool, spool_root: Path, start_worker: Starter
) -> None:
    (task_id,) = app.enqueue_many(
        [{"task": "fail", "args": ["no"], "no_retry_on": ["RuntimeError"]}], check=False
    )
    start_worker()
    wait_until(state_is(app, task_id, "failed"))
    shown = app.show(task_id)
    assert shown["attempts"] == 1
    assert shown["history"][0]["decision"]["reason"] == (
        "RuntimeError is not retried (no_retry_on RuntimeError)"
    )
    entry = Catalog.load(spool_root).entry("only_os_errors_retried")
    assert entry is not None and entry.retry_on == ("OSError", "TimeoutError")


def test_retry_on_takes_exception_types_or_names_only(tmp_path: Path) -> None:
    other = Spool(root=tmp_path)
    with pytest.raises(TypeError, match="retry_on: 42 is neither"):
        other.task(retry_on=(42,))  # type: ignore[arg-type]
