"""The shortest path through spool: enqueue, a worker runs it, wait returns the result."""

from __future__ import annotations

from spool import Spool
from tests.conftest import run_burst


def test_enqueued_task_runs_and_wait_returns_its_result(app: Spool, spool_root) -> None:
    task_id = app.enqueue("add", args=[2, 3])
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    assert app.wait(task_id, timeout=5) == 5
