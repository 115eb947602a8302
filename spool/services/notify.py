"""`spool notify`: delivers the events in <root>/.events/ to every configured sink.

Events are offered in name order (their finish time, so a task's events in order), in batches.
An event is delivered when every sink accepted it; it is then renamed into .events/.sent/ (the
tombstone that keeps recovery from writing it again), and .sent/ is pruned after a day (or
beyond 100,000 entries). When some sinks accepted an event and another refused it, the names of
the accepting ones go to .events/.partial/<name>, so the retry offers it only to the others.
A refused event stops the pass: the notifier waits (0.5 s doubling up to 10 s by default) and
offers it again, and nothing after it is delivered before it (strict order, at least once).

Delivery is at least once: the notifier may die after a sink accepted an event and before the
rename, and then offers it again with the same `event_id`. One notifier runs at a time (a lock
in .events/; a second one waits). It wakes on filesystem events in .events/ (watchdog) and
rescans every 2 s; SIGHUP or a change of the config file reloads the sinks; SIGTERM/SIGINT stop
it after the batch in hand (exit 0).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from spool.config import Settings
from spool.events import events_dir, is_event_name, partial_dir, sent_dir
from spool.fsio import list_names, write_atomic
from spool.layout import FILE_MODE, ensure_dir
from spool.services.runner import Resident
from spool.services.sinks import Event, Sink, make_sinks

log = logging.getLogger("spool.notify")  # the name operators filter on
BATCH = 256
RESCAN_SECONDS = 2.0
PRUNE_SECONDS = 60.0
KEEP_SENT_SECONDS = 86400.0
KEEP_SENT_MAX = 100_000


class Notifier(Resident):
    """The resident delivery loop."""

    keeps, logger = "the current sinks", log.name

    def __init__(self, settings: Settings, reload: Callable[[], Settings]) -> None:
        super().__init__(settings, reload)
        self.dir = events_dir(settings.root)
        self.sinks: list[Sink] = make_sinks(settings.notify)
        self.accepted: dict[str, set[str]] = {}  # event name -> sinks that accepted it
        self.failures = 0
        self.last_prune = 0.0
        self.delivered = 0

    # ---- life cycle ------------------------------------------------------------------

    def run(self) -> int:
        self.start()
        for directory in (self.dir, sent_dir(self.settings.root), partial_dir(self.settings.root)):
            ensure_dir(directory)
        lock = FileLock(str(self.dir / ".notify.lock"), mode=FILE_MODE)
        if not self.take(lock):
            return 0
        observer = self.watch()
        self.describe()
        try:
            while not self.stopped.is_set():
                self.wakeup.clear()  # before looking: an event during the pass is kept
                self.reload_if_asked()
                ok = self.deliver_pending() if self.sinks else True
                now = time.time()
                if now - self.last_prune >= PRUNE_SECONDS:
                    self.last_prune = now
                    prune_sent(self.settings.root, now)
                if ok:
                    self.failures = 0
                    for sink in self.sinks:
                        sink.idle()
                    self.wakeup.wait(RESCAN_SECONDS)
                else:
                    self.failures += 1
                    self.stopped.wait(self.backoff())
        finally:
            for sink in self.sinks:
                sink.close()
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)
            self.finish()
            lock.release()
        log.info("notifier stopped")
        return 0

    def take(self, lock: FileLock) -> bool:
        """Hold the notifier lock (waiting while another notifier runs); False if stopped."""
        waited = False
        while not self.stopped.is_set():
            try:
                lock.acquire(timeout=1.0)
                return True
            except Timeout:
                if not waited:
                    log.info("another notifier runs on %s; waiting for it to stop", self.dir)
                    waited = True
        return False

    def describe(self) -> None:
        names = ", ".join(s.name for s in self.sinks)
        if names:
            log.info("notifier started: %s, sinks %s", self.dir, names)
        else:
            log.info("notifier started: no sinks in [notify]; idle until the config names some")

    def backoff(self) -> float:
        notify = self.settings.notify
        exponent = min(self.failures - 1, 30)
        return float(
            min(notify.retry_backoff_max_seconds, notify.retry_backoff_seconds * 2.0**exponent)
        )

    def apply(self, settings: Settings) -> None:
        sinks = make_sinks(settings.notify)
        for sink in self.sinks:
            sink.close()
        self.settings, self.sinks = settings, sinks
        self.accepted.clear()
        log.info("config reloaded")
        self.describe()

    def watch(self) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        directory = os.path.abspath(self.dir)
        wakeup = self.wakeup

        class Arrivals(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in ("created", "moved"):
                    return
                path = os.fsdecode(event.dest_path or event.src_path)
                if os.path.dirname(path) == directory and is_event_name(os.path.basename(path)):
                    wakeup.set()

        observer = Observer()
        try:
            observer.schedule(Arrivals(), directory, recursive=False)
            observer.daemon = True
            observer.start()
        except OSError as exc:
            log.warning("no filesystem events for %s (%s): rescanning every %g s",
                        directory, exc, RESCAN_SECONDS)  # fmt: skip
            return None
        return observer

    # ---- delivery --------------------------------------------------------------------

    def deliver_pending(self) -> bool:
        """Offer every waiting event, in order; False when a sink refused one."""
        names = sorted(n for n in list_names(self.dir) if is_event_name(n))
        if not names:
            return True
        partial = set(list_names(partial_dir(self.settings.root)))
        size = min([BATCH, *(sink.batch for sink in self.sinks)])
        for start in range(0, len(names), size):
            if self.stopped.is_set():
                return True
            batch = self.load(names[start : start + size], partial)
            if batch and not self.deliver(batch):
                return False
        return True

    def load(self, names: list[str], partial: set[str]) -> list[Event]:
        events = []
        for name in names:
            try:
                data = (self.dir / name).read_bytes()
            except FileNotFoundError:
                continue
            try:
                fields = json.loads(data)
                if not isinstance(fields, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                self.set_aside(name, str(exc))
                continue
            if name in partial and name not in self.accepted:
                self.accepted[name] = read_partial(self.settings.root, name)
            events.append(Event(name, data, fields))
        return events

    def deliver(self, batch: list[Event]) -> bool:
        """Offer a batch to every sink; mark what all accepted; False if one was refused."""
        upto = len(batch)  # events before this index were accepted by every sink so far
        position = {e.name: i for i, e in enumerate(batch)}
        for sink in self.sinks:
            todo = [e for e in batch[:upto] if sink.name not in self.accepted.get(e.name, ())]
            try:
                count = sink.deliver(todo)
            except Exception:  # a sink's bug must not stop delivery to the others for good
                log.exception("sink %s failed", sink.name)
                count = 0
            for event in todo[:count]:
                self.accepted.setdefault(event.name, set()).add(sink.name)
            if count < len(todo):
                upto = position[todo[count].name]
        wanted = {s.name for s in self.sinks}
        for event in batch[:upto]:
            self.mark_sent(event)
        for event in batch[upto:]:
            got = self.accepted.get(event.name, set())
            if got and got != wanted:
                write_partial(self.settings.root, event.name, got)
        if upto:
            self.delivered += upto
            log.info("delivered %d event(s) (%d so far)", upto, self.delivered)
        return upto == len(batch)

    def mark_sent(self, event: Event) -> None:
        root = self.settings.root
        with contextlib.suppress(FileNotFoundError):  # (deleted by hand meanwhile)
            os.rename(self.dir / event.name, sent_dir(root) / event.name)
        if self.accepted.pop(event.name, None) is not None:
            (partial_dir(root) / event.name).unlink(missing_ok=True)

    def set_aside(self, name: str, why: str) -> None:
        bad = self.dir / ".bad"
        ensure_dir(bad)
        log.error("event %s is unreadable (%s): moved to %s", name, why, bad)
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.dir / name, bad / name)


def read_partial(root: Path, name: str) -> set[str]:
    try:
        data = json.loads((partial_dir(root) / name).read_bytes())
        return {str(s) for s in data.get("accepted_by", [])}
    except (OSError, ValueError, AttributeError):
        return set()


def write_partial(root: Path, name: str, accepted: set[str]) -> None:
    """Remember which sinks accepted an event (unsynced: losing it only means a resend)."""
    data = json.dumps({"accepted_by": sorted(accepted)}).encode()
    directory = partial_dir(root)
    write_atomic(data, directory, directory / name, durable=False)


def prune_sent(root: Path, now: float) -> int:
    """Delete tombstones older than a day, and the oldest beyond KEEP_SENT_MAX."""
    directory = sent_dir(root)
    names = sorted(n for n in list_names(directory) if is_event_name(n))
    horizon_us = int((now - KEEP_SENT_SECONDS) * 1_000_000)
    doomed = max(0, len(names) - KEEP_SENT_MAX)
    removed = 0
    for index, name in enumerate(names):
        head = name[:16]
        old = head.isdigit() and int(head) < horizon_us
        if index >= doomed and not old:
            break
        (directory / name).unlink(missing_ok=True)
        removed += 1
    return removed


def run_notifier(settings: Settings, reload: Callable[[], Settings]) -> int:
    """Deliver events until stopped; return the exit code."""
    return Notifier(settings, reload).run()
