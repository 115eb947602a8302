"""Slot arithmetic and parsing of [schedule.NAME] entries, computed for explicit `now` values.

No process and no clock here: every function under test takes `now`. DST behaviour is what
croniter does, pinned down by the tests named after it:
- spring forward (2026-03-29 Europe/Paris, 02:00-03:00 does not exist): an hourly cron has 23
  slots that day, and a daily 02:30 fires once, at 03:00+02:00 (the instant the gap ends);
- fall back (2026-10-25 Europe/Paris, 02:00-03:00 happens twice): an hourly cron has 25 slots
  that day, and a daily 02:30 fires twice, at 02:30+02:00 and again at 02:30+01:00.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from spool.envelope import is_valid_id
from spool.errors import ConfigError
from spool.services.schedule import MAX_CATCH_UP, Entry, due_slots, parse_entry, parse_schedule

PARIS = ZoneInfo("Europe/Paris")
SLOT = 1_780_000_000.0  # a whole second, so a slot of every 1s/2s/5s/10s/20s entry


def entry(**fields: Any) -> Entry:
    return parse_entry("tick", {"task": "echo", **fields})


def paris(year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=PARIS, fold=fold).timestamp()


def in_paris(instant: float) -> str:
    return datetime.fromtimestamp(instant, PARIS).isoformat()


def slots_of_day(cron: str, *day: int) -> list[str]:
    """The slots of a Europe/Paris cron from local midnight (included) to the next one."""
    year, month, date = day
    start = paris(year, month, date)
    end = paris(year, month, date + 1)
    rule = entry(cron=cron, timezone="Europe/Paris")
    return [in_paris(s) for s in rule.slots_between(start - 1, end - 1)]


# --- every: epoch-aligned slots ---------------------------------------------------------------


@pytest.mark.parametrize("every", ["1s", "2s", "30s", "5m", "1h", "1d", "0.25", "90"])
def test_every_slots_are_exact_multiples_of_the_interval_and_do_not_drift(every: str) -> None:
    rule = entry(every=every)
    step = rule.every_seconds
    assert step is not None
    slot = rule.next_slot(SLOT + 0.123)
    first = round(slot / step)
    for i in range(1000):
        assert slot == (first + i) * step
        assert slot % step == 0
        slot = rule.next_slot(slot)


@pytest.mark.parametrize("every", ["0.1", "0.3", "0.7", "2.2"])
def test_next_slot_of_a_fractional_interval_always_advances(every: str) -> None:
    # Broke once: `after // step` can land one multiple low for a slot like k * 0.1, so
    # next_slot returned the slot it was given and slots_between repeated it.
    rule = entry(every=every)
    step = rule.every_seconds
    assert step is not None
    slot = rule.next_slot(SLOT)
    first = round(slot / step)
    for i in range(1000):
        assert slot == (first + i) * step
        following = rule.next_slot(slot)
        assert following > slot
        assert following - slot == pytest.approx(step, abs=1e-6)
        slot = following


def test_every_slots_are_the_same_whenever_they_are_computed() -> None:
    rule = entry(every="10s")
    assert {rule.next_slot(SLOT + offset) for offset in (0.0, 0.001, 3.3, 9.999)} == {SLOT + 10}
    assert rule.last_slot(SLOT) == SLOT
    assert rule.last_slot(SLOT + 9.999) == SLOT


def test_slots_between_excludes_the_start_and_includes_the_end() -> None:
    rule = entry(every="1s")
    assert rule.slots_between(SLOT, SLOT + 3) == [SLOT + 1, SLOT + 2, SLOT + 3]


# --- due_slots: on time, missed, first start --------------------------------------------------


@pytest.mark.parametrize("misfire", ["skip", "once", "all"])
def test_a_slot_within_grace_fires_on_time_whatever_the_misfire_policy(misfire: str) -> None:
    rule = entry(every="1s", grace=0.3, misfire=misfire)
    assert due_slots(rule, SLOT - 1, SLOT + 0.2) == ([SLOT], 0)


def test_nothing_is_due_between_two_slots() -> None:
    rule = entry(every="1s", grace=0.3)
    assert due_slots(rule, SLOT, SLOT + 0.9) == ([], 0)


@pytest.mark.parametrize(
    ("misfire", "catch_up", "skipped"),
    [("skip", [], 5), ("once", [SLOT - 1], 4), ("all", [SLOT - 5 + i for i in range(5)], 0)],
)
def test_missed_slots_follow_the_misfire_policy_and_the_on_time_slot_still_fires(
    misfire: str, catch_up: list[float], skipped: int
) -> None:
    rule = entry(every="1s", grace=0.3, misfire=misfire)
    # last fired SLOT-6; now is SLOT+0.1: SLOT-5 .. SLOT-1 are missed, SLOT is on time
    assert due_slots(rule, SLOT - 6, SLOT + 0.1) == ([*catch_up, SLOT], skipped)


@pytest.mark.parametrize(
    ("misfire", "fired", "skipped"),
    [("skip", [], 5), ("once", [SLOT], 4), ("all", [SLOT - 4 + i for i in range(5)], 0)],
)
def test_missed_slots_without_an_on_time_slot_follow_the_misfire_policy(
    misfire: str, fired: list[float], skipped: int
) -> None:
    rule = entry(every="1s", grace=0.3, misfire=misfire)
    # last fired SLOT-5; now is SLOT+0.5, past SLOT's grace: SLOT-4 .. SLOT are all missed
    assert due_slots(rule, SLOT - 5, SLOT + 0.5) == (fired, skipped)


def test_misfire_defaults_to_one_catch_up_run() -> None:
    rule = entry(every="1s", grace=0.3)
    assert rule.misfire == "once"
    assert due_slots(rule, SLOT - 10, SLOT + 0.5) == ([SLOT], 9)


@pytest.mark.parametrize(
    ("misfire", "fired"),
    [
        ("skip", [SLOT]),
        ("once", [SLOT - 1, SLOT]),
        ("all", [SLOT - MAX_CATCH_UP + i for i in range(MAX_CATCH_UP + 1)]),
    ],
)
def test_a_long_outage_catches_up_from_the_latest_slots_and_fires_the_on_time_one(
    misfire: str, fired: list[float]
) -> None:
    # Broke once: only the 1001 OLDEST missed slots were considered, so after an hour down a
    # `once` entry fired a slot from 40 minutes ago, and not the on-time slot.
    rule = entry(every="1s", grace=0.3, misfire=misfire)
    slots, _ = due_slots(rule, SLOT - 3600, SLOT + 0.1)
    assert slots == fired


def test_a_long_outage_of_a_cron_entry_catches_up_from_the_latest_slots() -> None:
    rule = entry(cron="* * * * *", misfire="once", grace=5)
    minute = SLOT + 20  # 20:27:00 UTC
    slots, skipped = due_slots(rule, SLOT - 2 * 86400, minute + 2)
    assert slots == [minute - 60, minute]  # the last missed minute, then the on-time one
    assert skipped == MAX_CATCH_UP - 1


MINUTE = SLOT + 20  # 2026-05-28T20:27:00Z


@pytest.mark.parametrize("offset", [0.001, 1, 22, 30, 59, 59.999])
def test_a_schedule_never_fired_does_not_fire_the_slot_that_passed_before_it_started(
    offset: float,
) -> None:
    # Broke once: a scheduler started at 04:00:22 with cron "* * * * *" fired the 04:00:00
    # slot at once (22 s late, inside the grace), though a schedule starts with its next slot.
    rule = entry(cron="* * * * *")
    assert due_slots(rule, None, MINUTE + offset) == ([], 0)


@pytest.mark.parametrize("offset", [0.001, 1, 22, 30, 59, 59.999])
def test_a_schedule_never_fired_fires_its_next_slot_on_time(offset: float) -> None:
    rule = entry(cron="* * * * *")
    # what the scheduler records after its first look: the latest slot, as fired
    assert rule.last_slot(MINUTE + offset) == MINUTE
    assert due_slots(rule, MINUTE, MINUTE + 60.2) == ([MINUTE + 60], 0)


def test_a_schedule_never_fired_fires_a_slot_that_is_exactly_now() -> None:
    assert due_slots(entry(cron="* * * * *"), None, MINUTE) == ([MINUTE], 0)
    assert due_slots(entry(every="1s", grace=0.3), None, SLOT) == ([SLOT], 0)


@pytest.mark.parametrize("misfire", ["skip", "once", "all"])
def test_an_every_schedule_never_fired_waits_for_its_next_slot(misfire: str) -> None:
    rule = entry(every="1s", grace=0.3, misfire=misfire)
    assert due_slots(rule, None, SLOT + 0.25) == ([], 0)
    assert due_slots(rule, None, SLOT + 0.35) == ([], 0)


def test_default_grace_is_half_the_interval_capped_at_a_minute() -> None:
    assert entry(every="10s").grace(SLOT) == 5
    assert entry(cron="0 * * * *").grace(SLOT) == 60
    hourly = entry(cron="0 * * * *", misfire="skip")
    hour = 1_779_998_400.0  # 2026-05-28T20:00:00Z
    assert due_slots(hourly, hour - 3600, hour + 59) == ([hour], 0)  # on time
    assert due_slots(hourly, hour - 3600, hour + 61) == ([], 1)  # missed


# --- cron in a timezone -----------------------------------------------------------------------


def test_weekdays_at_0800_in_paris_skip_the_weekend() -> None:
    rule = entry(cron="0 8 * * 1-5", timezone="Europe/Paris")
    friday_noon = paris(2026, 1, 2, 12)
    slots = rule.slots_between(friday_noon, paris(2026, 1, 10))
    assert [in_paris(s) for s in slots] == [
        "2026-01-05T08:00:00+01:00",
        "2026-01-06T08:00:00+01:00",
        "2026-01-07T08:00:00+01:00",
        "2026-01-08T08:00:00+01:00",
        "2026-01-09T08:00:00+01:00",
    ]
    assert slots[0] == datetime(2026, 1, 5, 7, tzinfo=UTC).timestamp()


def test_weekdays_at_0800_in_paris_is_0600_utc_in_summer() -> None:
    rule = entry(cron="0 8 * * 1-5", timezone="Europe/Paris")
    slot = rule.next_slot(paris(2026, 7, 1, 7, 59))  # a Wednesday
    assert slot == datetime(2026, 7, 1, 6, tzinfo=UTC).timestamp()
    assert rule.last_slot(slot + 3600) == slot
    assert rule.next_slot(paris(2026, 7, 3, 8)) == paris(2026, 7, 6, 8)  # Friday 08:00 -> Monday


def test_cron_defaults_to_utc() -> None:
    rule = entry(cron="0 8 * * *")
    assert rule.timezone == "UTC"
    assert rule.next_slot(SLOT) == datetime(2026, 5, 29, 8, tzinfo=UTC).timestamp()


def test_an_hourly_cron_has_23_slots_on_the_spring_forward_day_without_0200() -> None:
    slots = slots_of_day("0 * * * *", 2026, 3, 29)
    assert len(slots) == 23
    assert slots[:3] == [
        "2026-03-29T00:00:00+01:00",
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
    ]


def test_a_daily_0230_in_paris_fires_at_0300_on_the_day_0230_does_not_exist() -> None:
    rule = entry(cron="30 2 * * *", timezone="Europe/Paris")
    slots = rule.slots_between(paris(2026, 3, 28, 12), paris(2026, 3, 30, 12))
    assert [in_paris(s) for s in slots] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_an_hourly_cron_has_25_slots_on_the_fall_back_day_with_0200_twice() -> None:
    slots = slots_of_day("0 * * * *", 2026, 10, 25)
    assert len(slots) == 25
    assert slots[2:4] == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"]


def test_a_daily_0230_in_paris_fires_twice_on_the_day_0230_happens_twice() -> None:
    rule = entry(cron="30 2 * * *", timezone="Europe/Paris")
    slots = rule.slots_between(paris(2026, 10, 24, 12), paris(2026, 10, 26, 12))
    assert [in_paris(s) for s in slots] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-26T02:30:00+01:00",
    ]
    assert slots[1] - slots[0] == 3600
    assert rule.task_id(slots[0]) != rule.task_id(slots[1])
    assert rule.last_slot(paris(2026, 10, 25, 2, 45, fold=1)) == slots[1]


def test_six_field_cron_takes_seconds_first() -> None:
    every_ten = entry(cron="*/10 * * * * *")
    assert every_ten.slots_between(SLOT, SLOT + 30) == [SLOT + 10, SLOT + 20, SLOT + 30]
    daily = entry(cron="15 30 9 * * *")  # 09:30:15 every day
    assert daily.next_slot(SLOT) == datetime(2026, 5, 29, 9, 30, 15, tzinfo=UTC).timestamp()


# --- task ids ---------------------------------------------------------------------------------


def test_task_ids_are_derived_from_the_name_and_the_slot() -> None:
    one = parse_entry("tick", {"task": "echo", "every": "1s"})
    other = parse_entry("tick", {"task": "add", "every": "1s"})
    assert one.task_id(SLOT) == other.task_id(SLOT) == "sched.tick.20260528T202640000000"
    assert one.task_id(SLOT) != one.task_id(SLOT + 1)
    assert parse_entry("tock", {"task": "echo", "every": "1s"}).task_id(SLOT) != one.task_id(SLOT)
    assert is_valid_id(one.task_id(SLOT))


def test_task_ids_of_sub_second_slots_differ() -> None:
    rule = entry(every="0.25")
    slots = rule.slots_between(SLOT, SLOT + 1)
    ids = {rule.task_id(s) for s in slots}
    assert len(ids) == len(slots) == 4


# --- parsing ----------------------------------------------------------------------------------


def test_a_full_entry_parses_into_its_fields() -> None:
    parsed = parse_entry(
        "digest",
        {
            "task": "echo", "args": [1, "a"], "kwargs": {"x": 1}, "queue": "mail",
            "priority": 5, "cron": "0 8 * * 1-5", "timezone": "Europe/Paris",
            "misfire": "skip", "grace": 30, "max_retries": 2, "timeout": 10,
        },
        known_tasks={"echo"},
    )  # fmt: skip
    assert (parsed.name, parsed.task, parsed.args, parsed.kwargs) == ("digest", "echo", (1, "a"),
                                                                      {"x": 1})  # fmt: skip
    assert (parsed.queue, parsed.priority, parsed.misfire, parsed.grace_seconds) == (
        "mail", 5, "skip", 30)  # fmt: skip
    assert parsed.when == "cron '0 8 * * 1-5' Europe/Paris"


@pytest.mark.parametrize(
    ("every", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), (2, 2)]
)
def test_every_accepts_units_and_plain_seconds(every: object, seconds: float) -> None:
    assert entry(every=every).every_seconds == seconds


BAD_ENTRIES: list[tuple[dict[str, Any], str]] = [
    ({"task": "echo", "cron": "61 * * * *"}, "cron '61 * * * *'"),
    ({"task": "echo", "cron": "* * *"}, "cron"),
    ({"task": "echo", "cron": "* * * * * * *"}, "cron"),
    ({"task": "echo", "cron": 5}, "cron"),
    ({"task": "echo", "cron": "0 0 30 2 *"}, "never fires"),
    ({"task": "echo", "cron": "* * * * *", "every": "1s"}, "exactly one of cron or every"),
    ({"task": "echo"}, "exactly one of cron or every"),
    ({"task": "echo", "every": "1s", "evry": "1s"}, "unknown key 'evry'"),
    ({"every": "1s"}, "task is required"),
    ({"task": "echo", "every": "1s", "timezone": "Mars/Olympus_Mons"}, "unknown timezone"),
    ({"task": "echo", "every": "1s", "timezone": 1}, "unknown timezone"),
    ({"task": "echo", "every": "1s", "misfire": "twice"}, "misfire must be one of"),
    ({"task": "echo", "every": "1s", "misfire": ["once"]}, "misfire must be one of"),
    ({"task": "echo", "every": "fast"}, "every must look like"),
    ({"task": "echo", "every": "0s"}, "every must be at least"),
    ({"task": "echo", "every": True}, "every must look like"),
    ({"task": "echo", "every": "1s", "args": "x"}, "args has the wrong type"),
    ({"task": "echo", "every": "1s", "kwargs": [1]}, "kwargs has the wrong type"),
    ({"task": "echo", "every": "1s", "priority": "high"}, "priority has the wrong type"),
    ({"task": "echo", "every": "1s", "priority": True}, "priority has the wrong type"),
    ({"task": "echo", "every": "1s", "priority": 10}, "priority must be 0-9"),
    ({"task": "echo", "every": "1s", "grace": "soon"}, "grace: not a duration"),
    ({"task": "echo", "every": "1s", "timeout": True}, "timeout: not a duration"),
    ({"task": "echo", "every": "1s", "grace": -1}, "grace must be >= 0"),
    ({"task": "echo", "every": "1s", "timeout": 0}, "timeout > 0"),
    ({"task": "echo", "every": "1s", "max_retries": "3"}, "max_retries has the wrong type"),
    ({"task": "echo", "every": "1s", "queue": "a/b"}, "queue"),
    ({"task": "nope", "every": "1s"}, "unknown task 'nope'"),
]


@pytest.mark.parametrize(("table", "message"), BAD_ENTRIES)
def test_a_bad_entry_is_a_one_line_config_error_naming_it(
    table: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_entry("bad", table, known_tasks={"echo", "add"})
    text = str(caught.value)
    assert text.startswith("[schedule.bad]: ")
    assert message in text
    assert "\n" not in text


def test_an_unknown_task_is_accepted_when_the_tasks_are_not_known() -> None:
    assert parse_entry("later", {"task": "nope", "every": "1s"}).task == "nope"


def test_an_entry_that_is_not_a_table_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^\[schedule\.tick\]: must be a table$"):
        parse_schedule({"tick": "every 1s"})


def test_a_bad_entry_name_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^\[schedule\.a b\]: a schedule name"):
        parse_schedule({"a b": {"task": "echo", "every": "1s"}})


def test_the_error_names_the_bad_entry_among_good_ones() -> None:
    tables = {
        "good": {"task": "echo", "every": "1s"},
        "broken": {"task": "echo", "cron": "not a cron"},
        "fine": {"task": "echo", "cron": "0 8 * * *"},
    }
    with pytest.raises(ConfigError, match=r"^\[schedule\.broken\]: cron 'not a cron'"):
        parse_schedule(tables)


def test_grace_and_timeout_of_an_entry_take_durations() -> None:
    entry = parse_entry("tick", {"task": "echo", "every": "1h", "grace": "10m", "timeout": "90s"})
    assert (entry.grace_seconds, entry.timeout) == (600.0, 90.0)
