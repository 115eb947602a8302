"""The handler process (spool.execute), driven directly: a reply that is already there wins
over a stop or a timeout that comes at the same moment, so a handler that has returned is never
run again because of a late signal."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from spool.errors import ConfigError
from spool.execute import Executor
from tests.conftest import PROJECT_DIR


@pytest.fixture
def executor() -> Iterator[Executor]:
    running = Executor(["tests.tasks"], str(PROJECT_DIR))
    running.start()
    yield running
    running.kill()


def until_the_reply_is_there(executor: Executor) -> None:
    assert executor.channel is not None
    assert executor.channel.readable(10), "the handler did not answer within 10 s"


def test_a_stop_after_the_handler_returned_keeps_its_result(executor: Executor) -> None:
    outcome = executor.run(
        {"task": "echo", "args": [7]},
        None,
        lambda: True,
        lambda: until_the_reply_is_there(executor),
    )
    assert outcome.ok and outcome.result == 7 and not outcome.interrupted


def test_a_timeout_reached_after_the_handler_returned_keeps_its_result(executor: Executor) -> None:
    timeout = 0.05
    past_the_deadline = time.monotonic() + 2 * timeout

    def meanwhile() -> None:
        until_the_reply_is_there(executor)
        while time.monotonic() < past_the_deadline:
            time.sleep(0.005)

    outcome = executor.run({"task": "echo", "args": [7]}, timeout, lambda: False, meanwhile)
    assert outcome.ok and outcome.result == 7


def test_a_stop_while_the_handler_runs_ends_the_attempt(executor: Executor) -> None:
    outcome = executor.run({"task": "sleep_then_return", "args": [30]}, None, lambda: True)
    assert outcome.interrupted and not outcome.ok
    assert executor.proc is None  # killed; the next attempt starts a new one


def test_a_timeout_while_the_handler_runs_fails_the_attempt(executor: Executor) -> None:
    outcome = executor.run({"task": "sleep_then_return", "args": [30]}, 0.2, lambda: False)
    assert not outcome.ok and outcome.error is not None and outcome.error["type"] == "Timeout"


def test_a_handler_process_killed_before_it_answers_is_started_again() -> None:
    spawned: list[int] = []

    def kill_the_first(pid: int) -> None:  # before it has imported anything
        spawned.append(pid)
        if len(spawned) == 1:
            os.kill(pid, signal.SIGKILL)

    executor = Executor(["tests.tasks"], str(PROJECT_DIR), on_spawn=kill_the_first)
    try:
        assert "echo" in executor.start()
        assert len(spawned) == 2
        assert executor.run({"task": "echo", "args": [1]}, 10, lambda: False).result == 1
    finally:
        executor.kill()


def test_a_module_that_does_not_import_is_not_started_again() -> None:
    spawned: list[int] = []
    executor = Executor(["no_such_module_here"], str(PROJECT_DIR), on_spawn=spawned.append)
    with pytest.raises(ConfigError, match="no_such_module_here"):
        executor.start()
    assert len(spawned) == 1
