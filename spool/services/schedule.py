"""Schedule entries from the config's [schedule.NAME] tables, and their slot arithmetic.

A slot is an instant a schedule fires at. Slots come from the schedule alone (cron via
croniter in the entry's timezone, or `every` aligned to the Unix epoch), never from
"now + interval", so they do not drift and every scheduler computes the same ones. Every
function here takes `now` as an argument.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from spool.config import parse_duration
from spool.envelope import format_compact
from spool.errors import ConfigError
from spool.layout import check_queue_name
from spool.tables import as_table, duration

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MISFIRE_POLICIES = ("skip", "once", "all")
KEYS = {
    "task", "args", "kwargs", "queue", "priority", "cron", "every", "timezone", "misfire",
    "grace", "max_retries", "timeout",
}  # fmt: skip
MAX_CATCH_UP = 1000  # misfire = "all" never enqueues more than this many missed slots at once
GRACE_CAP_SECONDS = 60.0
CRON_CHECK_START = datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC"))


@dataclass(frozen=True)
class Entry:
    """One [schedule.NAME] table: what to enqueue, and when."""

    name: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None  # None: the queue the task's handler declares (spool.manifest)
    priority: int = 0
    cron: str | None = None
    every_seconds: float | None = None
    timezone: str = "UTC"
    misfire: str = "once"
    grace_seconds: float | None = None
    max_retries: int | None = None
    timeout: float | None = None

    @property
    def when(self) -> str:
        if self.cron is not None:
            return f"cron '{self.cron}' {self.timezone}"
        return f"every {self.every_seconds:g}s"

    def next_slot(self, after: float) -> float:
        """The first slot strictly after `after` (epoch seconds)."""
        if self.every_seconds is not None:
            return (self.every_index(after) + 1) * self.every_seconds
        assert self.cron is not None
        start = datetime.fromtimestamp(after, ZoneInfo(self.timezone))
        it = croniter(self.cron, start, second_at_beginning=True)
        return float(it.get_next(float))

    def slots_between(self, start: float, end: float, limit: int = MAX_CATCH_UP + 1) -> list[float]:
        """Slots s with start < s <= end, at most `limit` of them (the earliest)."""
        slots: list[float] = []
        slot = self.next_slot(start)
        while slot <= end and len(slots) < limit:
            slots.append(slot)
            slot = self.next_slot(slot)
        return slots

    def last_slot(self, at: float) -> float | None:
        """The latest slot s <= at (None if there is none within a year)."""
        if self.every_seconds is not None:
            return self.every_index(at) * self.every_seconds
        assert self.cron is not None
        end = datetime.fromtimestamp(at, ZoneInfo(self.timezone))
        it = croniter(self.cron, end, second_at_beginning=True, is_prev=True)
        prev = float(it.get_prev(float))
        nxt = self.next_slot(prev)
        return nxt if nxt <= at else prev

    def every_index(self, at: float) -> int:
        """The largest k with k * every <= at. Exact despite float rounding: `at // every` alone
        can land one below for a slot like 17 * 0.1, and next_slot would then not advance."""
        step = self.every_seconds
        assert step is not None
        k = int(at // step)
        while k * step > at:
            k -= 1
        while (k + 1) * step <= at:
            k += 1
        return k

    def latest_slots(self, after: float, end: float, count: int) -> list[float]:
        """The latest `count` slots s with after < s <= end, earliest first."""
        if self.every_seconds is not None:
            start = max(after, (self.every_index(end) - count) * self.every_seconds)
        else:
            assert self.cron is not None
            it = croniter(self.cron, datetime.fromtimestamp(end, ZoneInfo(self.timezone)),
                          second_at_beginning=True, is_prev=True)  # fmt: skip
            earliest = end
            for _ in range(count):
                earliest = float(it.get_prev(float))
            start = max(after, earliest - 1)  # cron slots are whole seconds
        return self.slots_between(start, end, limit=2 * count + 2)[-count:]

    def grace(self, slot: float) -> float:
        """How late a slot may fire and still count as on time: the entry's, else half the
        distance to the next slot, at most a minute."""
        if self.grace_seconds is not None:
            return self.grace_seconds
        return min(GRACE_CAP_SECONDS, (self.next_slot(slot) - slot) / 2)

    def task_id(self, slot: float) -> str:
        """The id of the task for a slot: the same for every scheduler."""
        return f"sched.{self.name}.{format_compact(slot)}"


def due_slots(entry: Entry, last_fired: float | None, now: float) -> tuple[list[float], int]:
    """Slots to fire now, and how many missed slots are skipped, given the last fired slot.

    On time (within grace): fired. Missed: per `misfire`: skip none, once the latest, all of
    them (at most MAX_CATCH_UP). A schedule never fired before starts with its next slot: a
    slot that passed before `now` is not fired, even within grace (the caller then records the
    latest slot as fired, so the next one is on time). After an outage of more than
    MAX_CATCH_UP slots only the latest MAX_CATCH_UP + 1 are considered (and counted as skipped).
    """
    if last_fired is None:
        latest = entry.last_slot(now)
        return ([latest] if latest == now else []), 0
    slots = entry.slots_between(last_fired, now)
    if len(slots) > MAX_CATCH_UP:  # a long outage: the latest slots, not the oldest, matter
        slots = entry.latest_slots(last_fired, now, MAX_CATCH_UP + 1)
    on_time = [s for s in slots if now - s <= entry.grace(s)]
    missed = [s for s in slots if now - s > entry.grace(s)]
    if entry.misfire == "skip" or not missed:
        chosen: list[float] = []
    elif entry.misfire == "once":
        chosen = missed[-1:]
    else:
        chosen = missed[-MAX_CATCH_UP:]
    return chosen + on_time, len(missed) - len(chosen)


def parse_every(value: object, where: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        message = "every must look like 30s, 5m, 1h, 1d or a number of seconds"
        raise ConfigError(f"{where}: {message}") from None
    if seconds < 0.1:
        raise ConfigError(f"{where}: every must be at least 0.1 s")
    return seconds


def parse_entry(name: str, table: Mapping[str, Any], known_tasks: set[str] | None = None) -> Entry:
    """Check one [schedule.NAME] table. Raises: ConfigError naming the entry."""
    where = f"[schedule.{name}]"
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: a schedule name must be 1-64 of A-Z a-z 0-9 _ -")
    as_table(table, KEYS, where)
    task = table.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigError(f"{where}: task is required (a registered task name)")
    if known_tasks is not None and task not in known_tasks:
        raise ConfigError(f"{where}: unknown task {task!r} (not registered by the tasks modules)")
    if ("cron" in table) == ("every" in table):
        raise ConfigError(f"{where}: give exactly one of cron or every")
    values: dict[str, Any] = {"name": name, "task": task}
    values.update(typed(table, where))
    if "cron" in table:
        cron = table["cron"]
        fields = len(cron.split()) if isinstance(cron, str) else 0
        if fields not in (5, 6) or not croniter.is_valid(cron, second_at_beginning=True):
            raise ConfigError(
                f"{where}: cron {cron!r} is not a valid 5-field (or 6 with seconds) expression"
            )
        try:  # a valid expression may match no date at all (0 0 30 2 *): say so now, not later
            croniter(cron, CRON_CHECK_START, second_at_beginning=True).get_next(float)
        except CroniterError:
            raise ConfigError(f"{where}: cron {cron!r} never fires") from None
        values["cron"] = cron
    else:
        values["every_seconds"] = parse_every(table["every"], where)
    timezone = table.get("timezone", "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(f"{where}: unknown timezone {timezone!r}") from None
    values["timezone"] = timezone
    misfire = table.get("misfire", "once")
    if misfire not in MISFIRE_POLICIES:
        raise ConfigError(f"{where}: misfire must be one of {', '.join(MISFIRE_POLICIES)}")
    values["misfire"] = misfire
    return Entry(**values)


def typed(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The optional plain fields of an entry, type-checked."""
    values: dict[str, Any] = {}
    checks: list[tuple[str, str, type | tuple[type, ...]]] = [
        ("args", "args", list),
        ("kwargs", "kwargs", dict),
        ("queue", "queue", str),
        ("priority", "priority", int),
        ("max_retries", "max_retries", int),
    ]
    for key, attr in (("grace", "grace_seconds"), ("timeout", "timeout")):  # 90s, 5m or seconds
        if key in table:
            values[attr] = duration(table, key, where)
    for key, attr, kind in checks:
        if key not in table:
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")
        values[attr] = tuple(value) if isinstance(value, list) else value
    if "queue" in values:
        try:
            check_queue_name(values["queue"])
        except Exception as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if not 0 <= values.get("priority", 0) <= 9:
        raise ConfigError(f"{where}: priority must be 0-9")
    if values.get("grace_seconds", 0) < 0 or values.get("timeout", 1) <= 0:
        raise ConfigError(f"{where}: grace must be >= 0 and timeout > 0")
    return values


def parse_schedule(
    tables: Mapping[str, Any], known_tasks: set[str] | None = None
) -> dict[str, Entry]:
    """All entries of the config's [schedule] table. Raises: ConfigError naming the entry."""
    return {name: parse_entry(name, table, known_tasks) for name, table in tables.items()}


def slot_text(slot: float, timezone: str = "UTC") -> str:
    return datetime.fromtimestamp(slot, ZoneInfo(timezone)).isoformat(timespec="seconds")
