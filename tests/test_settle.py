"""When a file that is not JSON is read again, and when it is rejected (spool.settle)."""

from __future__ import annotations

import time

from spool.settle import RECHECK_SECONDS, SETTLE_SECONDS, Settling

KEY = ("default", "job.json")


def test_bytes_that_keep_changing_are_read_again_soon() -> None:
    settling = Settling(trust_mtime=False)
    now_ns = time.time_ns()
    assert settling.wait_for(KEY, b"{", now_ns) == RECHECK_SECONDS
    assert settling.wait_for(KEY, b'{"ta', now_ns) == RECHECK_SECONDS
    assert settling.wait_for(KEY, b'{"task": ', now_ns) == RECHECK_SECONDS


def test_unchanged_bytes_wait_out_the_rest_of_the_settle_time_then_are_rejected() -> None:
    settling = Settling(trust_mtime=False)
    assert settling.wait_for(KEY, b"{", time.time_ns()) == RECHECK_SECONDS
    left = settling.wait_for(KEY, b"{", time.time_ns())
    assert RECHECK_SECONDS < left <= SETTLE_SECONDS
    settling.seen[KEY].since -= SETTLE_SECONDS  # as if first read a settle time ago
    assert settling.wait_for(KEY, b"{", time.time_ns()) == 0.0
    assert settling.seen == {}


def test_file_times_are_ignored_unless_they_come_from_this_hosts_clock() -> None:
    """Shared mode: an mtime from the file server (or a lease renewal) says nothing."""
    an_hour_ago = time.time_ns() - 3600 * 10**9
    assert Settling(trust_mtime=False).wait_for(KEY, b"{", an_hour_ago) == RECHECK_SECONDS
    assert Settling(trust_mtime=True).wait_for(KEY, b"{", an_hour_ago) == 0.0


def test_a_file_that_parsed_or_was_taken_elsewhere_is_forgotten() -> None:
    settling = Settling(trust_mtime=False)
    settling.wait_for(KEY, b"{", time.time_ns())
    settling.settled(KEY)
    assert settling.seen == {}
    settling.wait_for(KEY, b"{", time.time_ns())
    settling.seen[KEY].since -= 3600  # another worker settled it long ago
    settling.pruned -= 3600
    settling.wait_for(("default", "other.json"), b"{", time.time_ns())
    assert list(settling.seen) == [("default", "other.json")]
