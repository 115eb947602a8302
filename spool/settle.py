"""Task files still being written in place.

The contract asks a producer to write a task file elsewhere and rename it into incoming/. A
program that writes straight into incoming/ instead (open, write, close) lets a worker see the
file before it is whole: empty, or cut off in the middle, so not JSON yet. Such a file is not
rejected at once: the worker puts it back and reads it again later, and rejects it only once
its bytes have not changed for SETTLE_SECONDS. A JSON object is complete exactly when it
parses, so a file that parses is never taken early.

"Not changed" is judged by the bytes (length and CRC-32) on the worker's own monotonic clock,
never by comparing a file time with this host's clock: a network mount's mtimes come from the
file server, and a shared-mode lease renewal touches the claim. On one host (mtimes from this
host's kernel) a file last written SETTLE_SECONDS ago or more is rejected at once. The worker
passes both clocks in (`now`: epoch seconds, `now_mono`: time.monotonic()).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

SETTLE_SECONDS = 1.0  # a file that is not JSON and has not changed this long is rejected
RECHECK_SECONDS = 0.1  # how soon a file whose bytes changed is read again
FORGET_SECONDS = 60.0  # a sighting this old is dropped (another worker settled the file)
PRUNE_SECONDS = 10.0  # how often old sightings are looked for (a flood of broken files: 10,000)


@dataclass
class Sighting:
    fingerprint: tuple[int, int]  # (length, CRC-32) of the bytes read
    since: float  # (monotonic) when these bytes were first read


class Settling:
    """The files this worker found not to be JSON (yet), by (queue, name)."""

    def __init__(self, trust_mtime: bool) -> None:
        self.trust_mtime = trust_mtime
        self.seen: dict[tuple[str, str], Sighting] = {}
        self.pruned = float("-inf")  # (monotonic) when old sightings were last looked for

    def wait_for(
        self, key: tuple[str, str], data: bytes, mtime_ns: int, now: float, now_mono: float
    ) -> float:
        """Seconds to leave a file whose `data` is not JSON before reading it again;
        0.0: it has settled, reject it now."""
        self.forget_old(now_mono)
        if self.trust_mtime and now * 1e9 - mtime_ns >= SETTLE_SECONDS * 1e9:
            self.seen.pop(key, None)
            return 0.0
        fingerprint = (len(data), zlib.crc32(data))
        sighting = self.seen.get(key)
        if sighting is None or sighting.fingerprint != fingerprint:
            self.seen[key] = Sighting(fingerprint, now_mono)
            return RECHECK_SECONDS
        left = sighting.since + SETTLE_SECONDS - now_mono
        if left <= 0:
            del self.seen[key]
            return 0.0
        return left

    def settled(self, key: tuple[str, str]) -> None:
        """The file parsed (or is gone): forget it."""
        if self.seen:
            self.seen.pop(key, None)

    def forget_old(self, now_mono: float) -> None:
        if now_mono - self.pruned < PRUNE_SECONDS:
            return
        self.pruned = now_mono
        for key, sighting in list(self.seen.items()):
            if now_mono - sighting.since > FORGET_SECONDS:
                del self.seen[key]
