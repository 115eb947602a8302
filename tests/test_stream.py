"""The stream of task events `spool up` shows (spool.inspect.stream), without supervisord: a
real worker on a real root, and the limit that keeps a busy spool from flooding the terminal."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from watchdog.observers import Observer

from spool import Spool
from spool.inspect.stream import MAX_LINES_PER_SECOND, Arrival, TaskStream
from tests.conftest import run_burst, wait_until


def test_each_task_claimed_done_or_failed_is_one_line(app: Spool, spool_root: Path) -> None:
    app.enqueue("echo")  # (the queue exists before the stream looks)
    assert run_burst(spool_root).returncode == 0
    lines: list[str] = []
    stopping = threading.Event()
    stream = TaskStream(spool_root, lines.append)
    thread = threading.Thread(target=stream.run, args=(stopping,))
    thread.start()
    try:
        wait_until(lambda: "default" in stream.watched)
        added = app.enqueue("add", args=[1, 2])
        failed = app.enqueue("fail", args=["it broke"], max_retries=0)
        assert run_burst(spool_root).returncode == 0
        wait_until(lambda: len(lines) >= 4)
    finally:
        stopping.set()
        thread.join(timeout=10)
    clock = r"\d\d:\d\d:\d\d"
    assert any(
        re.fullmatch(rf"{clock} claimed default  add  {added}  attempt 1 on \S+", x) for x in lines
    )
    assert any(
        re.fullmatch(rf"{clock} done    default  add  {added}  in \d+\.\d\ds", x) for x in lines
    )
    assert any(
        re.fullmatch(rf"{clock} failed  default  fail  {failed}  RuntimeError: it broke", x)
        for x in lines
    )


def test_a_busy_second_shows_at_most_its_share_of_lines_and_counts_the_rest(
    spool_root: Path,
) -> None:
    lines: list[str] = []
    stream = TaskStream(spool_root, lines.append)
    for n in range(3 * MAX_LINES_PER_SECOND):
        path = spool_root / "default" / "done" / f"t{n}.json"
        stream.arrivals.put(Arrival("default", "done", path, time.time()))
    stream.drain(time.monotonic() + 1.5, threading.Event())
    summaries = [line for line in lines if "not shown: too many" in line]
    shown = [line for line in lines if line not in summaries]
    hidden = sum(int(re.search(r"and (\d+) done", line)[1]) for line in summaries)  # type: ignore[index]
    assert summaries and len(shown) <= 2 * MAX_LINES_PER_SECOND
    assert len(shown) + hidden == 3 * MAX_LINES_PER_SECOND


def test_tasks_of_a_queue_made_after_the_stream_started_still_get_their_lines(
    app: Spool, spool_root: Path
) -> None:
    """The stream looks for new queues every few seconds; what a queue's first tasks did before
    it was seen is told when it is (a fresh root's first task, say, on `spool up`)."""
    lines: list[str] = []
    stream = TaskStream(spool_root, lines.append)
    observer = Observer()
    observer.start()
    try:
        stream.watch_new_queues(observer)  # the first look: no queue yet
        added = app.enqueue("add", args=[1, 2])
        assert run_burst(spool_root).returncode == 0
        stream.watch_new_queues(observer)  # the next look finds the queue, its task done
        stream.drain(time.monotonic() + 0.5, threading.Event())
    finally:
        observer.stop()
        observer.join(timeout=5)
    assert [line.split()[1:4] for line in lines] == [
        ["claimed", "default", "add"],
        ["done", "default", "add"],
    ]
    assert all(added in line for line in lines)
