"""When a file that is not JSON is read again, and when it is rejected (spool.settle)."""

from __future__ import annotations

from spool.settle import RECHECK_SECONDS, SETTLE_SECONDS, Settling

KEY = ("default", "job.json")
NOW = 1_800_000_000.0  # the wall clock (epoch seconds), compared with file times
MONO = 1000.0  # the monotonic clock: how long bytes have stayed the same
NOW_NS = int(NOW * 1e9)  # a file written just now


def test_bytes_that_keep_changing_are_read_again_soon() -> None:
    settling = Settling(trust_mtime=False)
    assert settling.wait_for(KEY, b"{", NOW_NS, NOW, MONO) == RECHECK_SECONDS
    assert settling.wait_for(KEY, b'{"ta', NOW_NS, NOW, MONO + 0.1) == RECHECK_SECONDS
    assert settling.wait_for(KEY, b'{"task": ', NOW_NS, NOW, MONO + 0.2) == RECHECK_SECONDS


def test_unchanged_bytes_wait_out_the_rest_of_the_settle_time_then_are_rejected() -> None:
    settling = Settling(trust_mtime=False)
    assert settling.wait_for(KEY, b"{", NOW_NS, NOW, MONO) == RECHECK_SECONDS
    left = settling.wait_for(KEY, b"{", NOW_NS, NOW, MONO + RECHECK_SECONDS)
    assert RECHECK_SECONDS < left <= SETTLE_SECONDS
    # a settle time after the first read (no sleeping: the time is passed in)
    assert settling.wait_for(KEY, b"{", NOW_NS, NOW, MONO + SETTLE_SECONDS) == 0.0
    assert settling.seen == {}


def test_file_times_are_ignored_unless_they_come_from_this_hosts_clock() -> None:
    """Shared mode: an mtime from the file server (or a lease renewal) says nothing."""
    an_hour_ago = NOW_NS - 3600 * 10**9
    assert (
        Settling(trust_mtime=False).wait_for(KEY, b"{", an_hour_ago, NOW, MONO) == RECHECK_SECONDS
    )
    assert Settling(trust_mtime=True).wait_for(KEY, b"{", an_hour_ago, NOW, MONO) == 0.0


def test_a_file_that_parsed_or_was_taken_elsewhere_is_forgotten() -> None:
    settling = Settling(trust_mtime=False)
    settling.wait_for(KEY, b"{", NOW_NS, NOW, MONO)
    settling.settled(KEY)
    assert settling.seen == {}
    settling.wait_for(KEY, b"{", NOW_NS, NOW, MONO + 1)
    # an hour later another worker has long settled it: the sighting is dropped
    settling.wait_for(("default", "other.json"), b"{", NOW_NS, NOW, MONO + 3600)
    assert list(settling.seen) == [("default", "other.json")]
