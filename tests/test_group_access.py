"""What a worker makes beside its tasks (each attempt's output, progress, rate slots, cap seats)
has group access whatever the worker's umask: directories 0o770, files 0o660, as the task files
themselves (a worker running as another user of the group must read and remove them)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spool import Spool
from spool.layout import QueueDirs
from tests.conftest import wait_until

Starter = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def narrow_umask() -> Iterator[None]:
    old = os.umask(0o077)  # (the worker started below inherits it)
    try:
        yield
    finally:
        os.umask(old)


def modes_under(base: Path) -> set[tuple[str, int]]:
    """(kind, mode) of `base` and everything below it."""
    found = {("dir", stat.S_IMODE(base.stat().st_mode))}
    for directory, dirs, files in os.walk(base):
        for name in dirs:
            found.add(("dir", stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)))
        for name in files:
            found.add(("file", stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)))
    return found


def test_output_progress_rate_slots_and_cap_seats_have_group_access(
    app: Spool, spool_root: Path, start_worker: Starter, tmp_path: Path, narrow_umask: None
) -> None:
    marker = tmp_path / "go-on"
    talked = app.enqueue("talk")
    waiting = app.enqueue("progress_then_wait", args=[str(marker)])
    rated = app.enqueue("rated")
    capped = app.enqueue("capped", args=[str(tmp_path / "capped.log"), 5])
    start_worker()
    start_worker()
    beside = QueueDirs(spool_root, "default").beside(waiting)
    wait_until(lambda: (beside / "progress.json").exists(), timeout=30)
    wait_until(lambda: (spool_root / ".caps").exists() and app.state_of(rated) == "done", 30)
    expected = {("dir", 0o770), ("file", 0o660)}
    assert modes_under(beside) <= expected
    assert modes_under(spool_root / ".caps") <= expected
    assert modes_under(spool_root / ".rates") == expected
    wait_until(lambda: app.state_of(talked) == "done", timeout=30)
    assert modes_under(QueueDirs(spool_root, "default").beside(talked)) == expected
    marker.touch()
    wait_until(lambda: app.state_of(waiting) == "done", timeout=30)
    assert app.state_of(capped) == "processing"
