"""Finding a task by id while workers move it (spool.lookup).

A task moves by renames, some backwards in the order lookup lists the directories: a promotion
from delayed/ to incoming/, a retry from processing/ to delayed/, a put-back to incoming/. The
moves below are real renames, made at the worst moment: while lookup lists a directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from spool import Spool, lookup
from spool.layout import delayed_name, processing_name, queue_dirs
from tests.conftest import names


def move_while_listing(
    monkeypatch: pytest.MonkeyPatch, listed: Path, move: Callable[[], None]
) -> list[bool]:
    """Make `move` happen once, right after lookup has listed `listed` (a real listing)."""
    real_list_names = lookup.list_names
    moved: list[bool] = []

    def list_names(directory: Path) -> list[str]:
        entries = real_list_names(directory)
        if Path(directory) == listed and not moved:
            move()
            moved.append(True)
        return entries

    monkeypatch.setattr(lookup, "list_names", list_names)
    return moved


def test_a_task_promoted_while_it_is_looked_for_is_found(
    app: Spool, spool_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = app.enqueue("echo", delay=3600)
    dirs = queue_dirs(spool_root, "default")
    [entry] = names(dirs.delayed)

    def promote() -> None:
        os.rename(dirs.delayed / entry, dirs.incoming / entry.partition("@")[2])

    moved = move_while_listing(monkeypatch, dirs.incoming, promote)
    found = lookup.locate(spool_root, task_id)
    assert moved and found is not None and found.state == "incoming"


def test_a_task_retried_while_it_is_looked_for_is_found(
    app: Spool, spool_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = app.enqueue("echo")
    dirs = queue_dirs(spool_root, "default")
    [name] = names(dirs.incoming)
    claim = dirs.processing / processing_name(name, "somehost-1-abcdef")
    os.rename(dirs.incoming / name, claim)

    def retry() -> None:
        os.rename(claim, dirs.delayed / delayed_name(1, name))

    moved = move_while_listing(monkeypatch, dirs.delayed, retry)
    found = lookup.locate(spool_root, task_id)
    assert moved and found is not None and found.state == "delayed"


def test_an_id_that_is_nowhere_is_unknown(app: Spool, spool_root: Path) -> None:
    app.enqueue("echo")
    assert lookup.locate(spool_root, "no-such-task") is None
