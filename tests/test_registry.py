"""What a task is registered with (TaskOptions), as the handler process, the task manifest and
a reload's log line carry it."""

from __future__ import annotations

import json
from pathlib import Path

from spool import Spool
from spool.registry import TaskOptions, task_changes


def test_options_cross_the_pipe_and_the_manifest_unchanged(tmp_path: Path) -> None:
    app = Spool(root=tmp_path)

    @app.task(queue="mail", max_retries=2, timeout=5, retry_backoff=0.5, priority=3, max_lost=4)
    def send(to: str, *, cc: str | None = None) -> None:
        """Send one mail."""

    described = send.describe()
    read = TaskOptions.from_json("send", json.loads(json.dumps(described.to_json())))
    assert read == described
    assert (read.queue, read.max_retries, read.timeout, read.priority) == ("mail", 2, 5.0, 3)
    assert read.doc == "Send one mail." and read.params is not None


def test_an_entry_with_fields_of_the_wrong_type_reads_as_the_defaults() -> None:
    entry = {"queue": 3, "max_retries": "2", "priority": True, "timeout": None, "doc": 1}
    assert TaskOptions.from_json("t", entry) == TaskOptions("t")


def test_a_reload_reports_added_removed_and_changed_tasks() -> None:
    old = {"a": TaskOptions("a"), "b": TaskOptions("b", timeout=5.0)}
    new = {"b": TaskOptions("b", timeout=9.0, queue="q"), "c": TaskOptions("c")}
    assert task_changes(old, new) == [
        "added c",
        "removed a",
        "changed b (queue 'default' -> 'q', timeout 5.0 -> 9.0)",
    ]
    assert task_changes(new, dict(new)) == []
