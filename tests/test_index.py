"""A worker's view of delayed tasks holds a bounded window, yet every task runs, earliest first."""

from __future__ import annotations

import os
import time
from pathlib import Path

from spool import Spool
from spool.index import DELAYED_WINDOW, STEAL_PAUSE_SECONDS, QueueIndex
from spool.layout import canonical_name, delayed_name, queue_dirs
from tests.conftest import names, wait_until
from tests.test_worker import Starter

BASE_US = 1_800_000_000_000_000
MONO = 1000.0  # a time.monotonic() reading: the index takes the time it is given


def put_delayed(index: QueueIndex, due_us: int, n: int) -> str:
    entry = delayed_name(due_us, canonical_name(0, due_us, f"t{n:06d}"))
    (index.dirs.delayed / entry).write_bytes(b"{}")
    return entry


def make_index(spool_root: Path) -> QueueIndex:
    return QueueIndex(queue_dirs(spool_root, "default").create(), max_file_bytes=1 << 20)


def drain_due(index: QueueIndex, now_us: int) -> list[str]:
    """Pop what is due the way a worker does, moving each entry out of delayed/."""
    popped: list[str] = []
    while batch := index.pop_due(now_us, MONO):
        for entry in batch:
            (index.dirs.delayed / entry).unlink()
        popped += batch
    return popped


def test_the_window_is_bounded_and_hands_out_every_entry_in_due_order(spool_root: Path) -> None:
    index = make_index(spool_root)
    total = 2 * DELAYED_WINDOW + 500
    entries = [put_delayed(index, BASE_US + i * 1000, i) for i in reversed(range(total))]
    index.rescan(time.time(), MONO)
    assert len(index.delayed) == DELAYED_WINDOW
    assert index.next_due_us() == BASE_US

    popped = drain_due(index, BASE_US + (total - 1) * 1000)

    assert popped == sorted(entries)
    assert index.next_due_us() is None
    assert len(index.delayed) == 0


def test_a_new_entry_beyond_the_window_waits_on_disk_and_is_found_later(
    spool_root: Path,
) -> None:
    index = make_index(spool_root)
    for i in range(DELAYED_WINDOW + 10):
        put_delayed(index, BASE_US + i * 1000, i)
    index.rescan(time.time(), MONO)
    late = put_delayed(index, BASE_US + 10**9, 999_999)
    early = put_delayed(index, BASE_US - 1000, 999_998)
    index.add_delayed(late)
    index.add_delayed(early)
    assert late not in index.delayed_names  # beyond the window: not held
    assert index.next_due_us() == BASE_US - 1000

    popped = drain_due(index, BASE_US + 10**9)

    assert popped[0] == early
    assert popped[-1] == late
    assert len(popped) == DELAYED_WINDOW + 12


def test_more_delayed_tasks_than_the_window_all_run(app: Spool, start_worker: Starter) -> None:
    total = DELAYED_WINDOW + 200
    ids = app.enqueue_many([{"task": "noop", "delay": 1.0} for _ in range(total)])
    assert len(names(app.settings.root / "default" / "delayed")) == total
    start_worker()
    done = app.settings.root / "default" / "done"
    wait_until(lambda: len(names(done)) == total, timeout=60, interval=0.1)
    assert sorted(n.removesuffix(".json") for n in names(done)) == sorted(ids)


def test_an_unchanged_delayed_directory_is_not_listed_again(spool_root: Path) -> None:
    index = make_index(spool_root)
    first = put_delayed(index, BASE_US, 1)
    past = time.time_ns() - 100 * 10**9
    os.utime(index.dirs.delayed, ns=(past, past))  # settled: last changed long ago
    index.rescan(time.time(), MONO)
    assert index.delayed_names == {first}

    hidden = put_delayed(index, BASE_US + 1000, 2)
    os.utime(index.dirs.delayed, ns=(past, past))  # a change the mtime does not show
    index.rescan(time.time(), MONO)
    assert hidden not in index.delayed_names  # not listed: the directory looked unchanged

    put_delayed(index, BASE_US + 2000, 3)  # an ordinary change moves the mtime
    index.rescan(time.time(), MONO)
    assert hidden in index.delayed_names
    assert len(index.delayed_names) == 3


# --- shared mode: shares of the ready tasks, names a stale listing still shows ---------------


def ready_names(count: int, priority: int = 0) -> list[str]:
    return [canonical_name(priority, BASE_US + i, f"r{priority}-{i:04d}") for i in range(count)]


def test_two_workers_take_disjoint_shares_first_then_the_rest(spool_root: Path) -> None:
    first, second = make_index(spool_root), make_index(spool_root)
    first.set_shard((0, 2))
    second.set_shard((1, 2))
    for name in ready_names(200):
        first.add_ready(name)
        second.add_ready(name)
    own_first = [first.pop_ready(MONO) for _ in range(len(first.ready))]
    own_second = [second.pop_ready(MONO) for _ in range(len(second.ready))]
    assert not set(own_first) & set(own_second)
    assert len(own_first) + len(own_second) == 200
    assert own_first == sorted(own_first)  # each share in queue order
    rest = [first.pop_ready(MONO) for _ in range(len(first.others))]
    assert rest == sorted(own_second)  # an empty share: the others' tasks, in order
    assert first.pop_ready(MONO) is None


def test_a_higher_priority_in_another_share_comes_before_an_own_lower_one(
    spool_root: Path,
) -> None:
    index = make_index(spool_root)
    index.set_shard((0, 2))
    low = [n for n in ready_names(20, priority=0) if index.mine(n)][:3]
    high = [n for n in ready_names(20, priority=5) if not index.mine(n)][:1]
    for name in low + high:
        index.add_ready(name)
    assert index.pop_ready(MONO) == high[0]
    assert index.pop_ready(MONO) == low[0]


def test_after_a_failed_steal_the_other_shares_are_left_alone_for_a_moment(
    spool_root: Path,
) -> None:
    index = make_index(spool_root)
    index.set_shard((0, 2))
    theirs = [n for n in ready_names(20) if not index.mine(n)][:2]
    for name in theirs:
        index.add_ready(name)
    assert index.pop_ready(MONO) == theirs[0]
    index.forget(theirs[0], MONO)  # its owner had claimed it already
    assert index.pop_ready(MONO) is None
    assert index.pop_ready(MONO + STEAL_PAUSE_SECONDS) == theirs[1]


def test_a_name_that_failed_is_skipped_while_a_stale_listing_shows_it(spool_root: Path) -> None:
    index = make_index(spool_root)
    index.stale_listings = True
    (name,) = ready_names(1)
    (index.dirs.incoming / name).write_bytes(b"{}")
    index.rescan(time.time(), MONO)
    assert index.pop_ready(MONO) == name
    index.forget(name, MONO)  # another host claimed it; this host's listing lags
    index.rescan(time.time(), MONO)
    assert index.pop_ready(MONO) is None
    (index.dirs.incoming / name).unlink()
    index.rescan(time.time(), MONO)  # the listing caught up: the name is let go ...
    assert index.gone == {}
    (index.dirs.incoming / name).write_bytes(b"{}")
    index.rescan(time.time(), MONO)  # ... so a task back under the same name (recovered)
    # is seen again
    assert index.pop_ready(MONO) == name


# --- files put back because they are not JSON yet (spool.settle) -----------------------------


def test_a_name_put_back_is_left_alone_until_its_time_whatever_events_and_listings_say(
    spool_root: Path,
) -> None:
    index = make_index(spool_root)
    (name,) = ready_names(1)
    (index.dirs.incoming / name).write_bytes(b'{"task": ')
    index.rescan(time.time(), MONO)
    assert index.pop_ready(MONO) == name
    index.look_again(name, 60, MONO)
    index.add_ready(name)  # an event for the file (the writer goes on)
    index.rescan(time.time(), MONO + 1)
    assert index.pop_ready(MONO + 1) is None
    index.return_later(MONO + 59)
    assert index.pop_ready(MONO + 59) is None
    index.return_later(MONO + 60)
    assert index.later == {} and index.pop_ready(MONO + 60) == name
