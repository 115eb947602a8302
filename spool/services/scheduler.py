"""The scheduler: a resident process that enqueues each slot of each schedule exactly once.

Per schedule, under <root>/.schedule/<name>/:

    <slot>            the slot's marker, created with O_EXCL before its task is enqueued:
                      whoever creates it owns the slot, so any number of schedulers side by
                      side, or one restarted mid-slot, enqueue one task per slot
    <slot>.sent       written once the task is durable
    last              the latest slot fired (for misfire decisions after a restart)
    <slot>.recover    created with O_EXCL by the one scheduler that recovers the slot (below)

A marker without .sent that is older than RECOVER_AFTER_SECONDS (by the file server's clock)
means a scheduler died between the two; the slot's task (its id is derived from the schedule
and the slot) is enqueued then, unless it exists. O_EXCL creates are exclusive on a network
filesystem's server too, so schedulers on several hosts also fire each slot once.

The scheduler sleeps until the next slot, and wakes early when the config file changes, on
SIGHUP (reload) and on SIGTERM/SIGINT (exit 0).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spool import producer
from spool.config import Settings
from spool.envelope import format_compact, parse_compact
from spool.errors import ConfigError, SpoolError
from spool.fsio import fsync_dir, list_names, server_now, write_atomic, write_file
from spool.layout import FILE_MODE, ensure_dir
from spool.lookup import locate
from spool.services.runner import Resident
from spool.services.schedule import Entry, due_slots, parse_schedule, slot_text

log = logging.getLogger("spool.scheduler")  # the name operators filter on
RECOVER_AFTER_SECONDS = 10.0
KEEP_MARKERS_SECONDS = 600.0
HOUSEKEEPING_SECONDS = 30.0
MAX_SLEEP_SECONDS = 60.0


def schedule_dir(root: Path, name: str) -> Path:
    return root / ".schedule" / name


def read_last(root: Path, name: str) -> float | None:
    """The latest slot fired for this schedule, or None if it never fired."""
    try:
        data = json.loads((schedule_dir(root, name) / "last").read_bytes())
        return float(data["slot"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_last(root: Path, name: str, slot: float) -> None:
    """Remember `slot` as fired, unless a later one is already remembered."""
    current = read_last(root, name)
    if current is not None and current >= slot:
        return
    directory = schedule_dir(root, name)
    data = json.dumps({"slot": slot, "at": slot_text(slot)}).encode()
    write_atomic(data, directory, directory / "last")


def known_task_names(settings: Settings) -> set[str] | None:
    """Names the tasks modules register, or None when they cannot be imported here."""
    if not settings.tasks:
        return None
    from spool.registry import collect_tasks, import_task_modules

    try:
        return set(collect_tasks(import_task_modules(settings.tasks, str(settings.project_dir))))
    except ConfigError as exc:
        log.warning("not checking schedule task names: %s", exc)
        return None


def load_entries(settings: Settings, check_tasks: bool = True) -> dict[str, Entry]:
    """Parse the config's schedule. Raises: ConfigError naming the bad entry."""
    known = known_task_names(settings) if check_tasks else None
    return parse_schedule(settings.schedule, known)


def fire(settings: Settings, entry: Entry, slot: float, scheduler_id: str) -> bool:
    """Enqueue the task of one slot unless another scheduler already did; True if we did."""
    directory = schedule_dir(settings.root, entry.name)
    ensure_dir(directory)
    marker = directory / format_compact(slot)
    info = json.dumps({"scheduler": scheduler_id, "claimed_at": time.time()}).encode()
    try:
        write_file(marker, info, durable=True)  # RACE: O_EXCL: exactly one scheduler gets here
    except FileExistsError:
        return False
    fsync_dir(directory)
    enqueue_slot(settings, entry, slot)
    mark_sent(marker)
    return True


def enqueue_now(settings: Settings, entry: Entry, task_id: str | None = None) -> str:
    """Enqueue the entry's task now (with `task_id`, else a new id); return the id."""
    task = producer.build_task(
        entry.task,
        entry.args,
        entry.kwargs,
        id=task_id,
        priority=entry.priority or None,
        max_retries=entry.max_retries,
        timeout=entry.timeout,
    )
    # routed by the published tasks, not refused: a slot is not lost to a deploy under way
    return producer.enqueue(settings, task, entry.queue, check=False)


def enqueue_slot(settings: Settings, entry: Entry, slot: float) -> str:
    task_id = enqueue_now(settings, entry, entry.task_id(slot))
    log.info("fired schedule=%s slot=%s id=%s task=%s", entry.name, slot_text(slot, entry.timezone),
             task_id, entry.task)  # fmt: skip
    return task_id


def mark_sent(marker: Path) -> None:
    fd = os.open(f"{marker}.sent", os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask must not narrow group access
    finally:
        os.close(fd)


def recover_unsent(settings: Settings, entry: Entry, now: float) -> int:
    """Enqueue the slots whose scheduler died between marker and task; return how many."""
    directory = schedule_dir(settings.root, entry.name)
    names = set(list_names(directory))
    unsent = [
        name
        for name in names
        if not name.startswith(".") and "." not in name and name != "last"
        if f"{name}.sent" not in names and f"{name}.recover" not in names
    ]
    if not unsent:
        return 0
    # Ages by the file server's clock only (a marker's mtime is set by the server that stored
    # it; so is a file written now), never by this host's clock against another's.
    now = server_now(directory)
    recovered = 0
    for name in unsent:
        marker = directory / name
        try:
            if now - os.stat(marker).st_mtime <= RECOVER_AFTER_SECONDS:
                continue
            # RACE: O_EXCL: of schedulers on any host, exactly one recovers the slot
            write_file(Path(f"{marker}.recover"), b"", durable=True)
        except (FileNotFoundError, FileExistsError):
            continue
        slot = parse_compact(name)
        if slot is None or Path(f"{marker}.sent").exists():
            continue
        if (
            locate(settings.root, entry.task_id(slot), [entry.queue] if entry.queue else None)
            is None
        ):
            enqueue_slot(settings, entry, slot)
            recovered += 1
        mark_sent(marker)
    return recovered


def prune_markers(root: Path, entry: Entry, now: float) -> None:
    """Delete markers of slots long past (the `last` file keeps the latest fired slot)."""
    directory = schedule_dir(root, entry.name)
    horizon = now - KEEP_MARKERS_SECONDS
    for name in list_names(directory):
        base = name.removesuffix(".sent").removesuffix(".recover")
        slot = parse_compact(base) if not base.startswith(".") and base != "last" else None
        if slot is not None and slot < horizon and (directory / f"{base}.sent").exists():
            (directory / name).unlink(missing_ok=True)


class Scheduler(Resident):
    """Runs the schedule until stopped: fire due slots, sleep until the next one."""

    keeps, logger = "the current schedule", log.name

    def __init__(
        self, settings: Settings, entries: dict[str, Entry], reload: Callable[[], Settings]
    ) -> None:
        super().__init__(settings, reload)
        self.entries = entries
        self.scheduler_id = f"{os.uname().nodename}-{os.getpid()}"
        self.last_housekeeping = 0.0

    def run(self) -> int:
        self.start()
        names = ", ".join(f"{e.name} ({e.when})" for e in self.entries.values())
        log.info("scheduler started: %s", names or "no schedule entries")
        try:
            while not self.stopped.is_set():
                self.wakeup.clear()
                self.reload_if_asked()
                self.tick(time.time())
                self.wakeup.wait(self.sleep_seconds(time.time()))
        finally:
            self.finish()
        log.info("scheduler stopped")
        return 0

    def tick(self, now: float) -> None:
        """Fire what is due for every entry; a failing entry never stops the others."""
        housekeeping = now - self.last_housekeeping >= HOUSEKEEPING_SECONDS
        for entry in list(self.entries.values()):
            try:
                self.fire_due(entry, now)
                if housekeeping:
                    recover_unsent(self.settings, entry, now)
                    prune_markers(self.settings.root, entry, now)
            except (OSError, SpoolError) as exc:
                log.error("schedule %s: %s", entry.name, exc)
        if housekeeping:
            self.last_housekeeping = now

    def fire_due(self, entry: Entry, now: float) -> None:
        root = self.settings.root
        last = read_last(root, entry.name)
        slots, skipped = due_slots(entry, last, now)
        if skipped:
            log.warning("schedule=%s skipped %d missed slot(s) (misfire=%s)", entry.name, skipped,
                        entry.misfire)  # fmt: skip
        for slot in slots:
            fire(self.settings, entry, slot, self.scheduler_id)
        if slots:
            write_last(root, entry.name, max(slots))
        elif last is None or skipped:
            latest = entry.last_slot(now)
            if latest is not None:
                ensure_dir(schedule_dir(root, entry.name))
                write_last(root, entry.name, latest)

    def sleep_seconds(self, now: float) -> float:
        waits = [MAX_SLEEP_SECONDS, self.last_housekeeping + HOUSEKEEPING_SECONDS - now]
        waits += [entry.next_slot(now) - now for entry in self.entries.values()]
        return max(0.001, min(waits))

    def apply(self, settings: Settings) -> None:
        entries = load_entries(settings)
        self.settings, self.entries = settings, entries
        log.info("schedule reloaded: %s", ", ".join(entries) or "no entries")


def describe(
    settings: Settings, entries: Mapping[str, Entry], now: float, count: int = 3
) -> list[dict[str, Any]]:
    """Each entry with its next run times and last fired slot (for `spool schedule ls`)."""
    rows = []
    for entry in entries.values():
        upcoming, slot = [], now
        for _ in range(count):
            slot = entry.next_slot(slot)
            upcoming.append(slot_text(slot, entry.timezone))
        last = read_last(settings.root, entry.name)
        rows.append({
            "name": entry.name, "task": entry.task, "queue": entry.queue, "when": entry.when,
            "cron": entry.cron, "every_seconds": entry.every_seconds, "timezone": entry.timezone,
            "misfire": entry.misfire, "next": upcoming,
            "last_fired": None if last is None else slot_text(last, entry.timezone),
        })  # fmt: skip
    return rows
