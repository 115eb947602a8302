"""The `spool scheduler` process: real subprocesses on a temp root, a temp config per test.

No worker runs, so every task a scheduler enqueued stays in <root>/default/incoming/, and a
duplicate shows as two files with the same id (`sched.<name>.<slot>`). `every = "1s"` entries
with `grace` < 1 s make a few seconds of downtime count as missed slots.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from spool.cli import cli
from spool.config import load_settings
from spool.envelope import id_of_name
from spool.services.scheduler import Scheduler, load_entries
from tests.conftest import PROJECT_DIR, names, wait_until

GRACE = 0.3
Start = Callable[[Path], "subprocess.Popen[bytes]"]


def tick(**fields: Any) -> dict[str, Any]:
    return {"task": "echo", "every": "1s", "grace": GRACE, **fields}


def write_config(path: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """A config naming the tests' tasks module, with one [schedule.NAME] table per entry."""
    lines = ['tasks = ["tests.tasks"]']
    for name, fields in entries.items():
        lines.append(f"[schedule.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def compact(slot: float) -> str:
    return datetime.fromtimestamp(slot, UTC).strftime("%Y%m%dT%H%M%S%f")


def slot_of(task_id: str, name: str) -> float:
    text = task_id.removeprefix(f"sched.{name}.")
    return datetime.strptime(text, "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC).timestamp()


def fired(root: Path, name: str = "tick") -> list[tuple[float, float]]:
    """(slot, enqueued_at) of every task file of the entry, a duplicate counted twice."""
    incoming = root / "default" / "incoming"
    tasks = []
    for file_name in names(incoming):
        task_id = id_of_name(file_name)
        if task_id.startswith(f"sched.{name}."):
            data = json.loads((incoming / file_name).read_bytes())
            tasks.append((slot_of(task_id, name), float(data["enqueued_at"])))
    return sorted(tasks)


def slots(root: Path, name: str = "tick") -> list[float]:
    return [slot for slot, _ in fired(root, name)]


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=10)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def scheduler_command(root: Path, config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "spool", "--root", str(root), "--config", str(config), *args]


def scheduler_env(root: Path) -> dict[str, str]:
    env = {**os.environ, "SPOOL_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    env.pop("SPOOL_CONFIG", None)
    return env


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.toml"


@pytest.fixture
def start_scheduler(spool_root: Path, tmp_path: Path) -> Iterator[Start]:
    """Start `spool scheduler` subprocesses (log in tmp_path); all are killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"scheduler-{len(procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                scheduler_command(spool_root, config, "scheduler"),
                cwd=PROJECT_DIR, env=scheduler_env(spool_root), stdout=log, stderr=log,
            )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


# --- the first slot ---------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.5, 22, 45, 59.5])
def test_a_scheduler_started_within_a_minute_fires_the_next_minute_not_the_one_that_passed(
    spool_root: Path, config_path: Path, offset: float
) -> None:
    # Broke once: started at 04:00:22 with cron "* * * * *", it fired 04:00:00 at once.
    config = write_config(config_path, {"tick": {"task": "echo", "cron": "* * * * *"}})
    settings = load_settings(str(spool_root), str(config), env={})
    scheduler = Scheduler(settings, load_entries(settings), lambda: settings)
    minute = 1_780_000_020.0  # 2026-05-28T20:27:00Z
    scheduler.tick(minute + offset)
    assert slots(spool_root) == []
    scheduler.tick(minute + 60.2)
    assert slots(spool_root) == [minute + 60]


# --- exactly one task per slot ----------------------------------------------------------------


def test_two_schedulers_side_by_side_for_10_s_enqueue_exactly_one_task_per_slot(
    spool_root: Path, config_path: Path, start_scheduler: Start
) -> None:
    config = write_config(config_path, {"tick": tick()})
    pair = [start_scheduler(config), start_scheduler(config)]
    wait_until(lambda: slots(spool_root), timeout=15)
    first = slots(spool_root)[0]
    wait_until(lambda: time.time() >= first + 10, timeout=15)
    assert [proc.poll() for proc in pair] == [None, None]
    elapsed = time.time() - first
    assert [stop(proc) for proc in pair] == [0, 0]

    fired_slots = slots(spool_root)
    assert len(fired_slots) == len(set(fired_slots)), "a slot was enqueued twice"
    assert fired_slots == [first + i for i in range(len(fired_slots))], "a slot was skipped"
    assert abs(len(fired_slots) - elapsed) <= 1
    markers = spool_root / ".schedule" / "tick"
    owners = [json.loads((markers / compact(s)).read_bytes())["scheduler"] for s in fired_slots]
    won = sorted(owners.count(owner) for owner in set(owners))
    print(
        f"two schedulers, {elapsed:.1f} s: {len(fired_slots)} slots, {len(fired_slots)} tasks,"
        f" 0 duplicates; slots won per scheduler: {won}"
    )


def expected_after_restart(
    misfire: str, last_fired: float, tick_at: float, until: float
) -> tuple[list[float], list[float]]:
    """The slots after `last_fired` that a scheduler whose first tick ran at `tick_at` should
    enqueue up to slot `until` (every 1s), and the slots it found missed at that tick."""
    due = [float(s) for s in range(int(last_fired) + 1, int(tick_at) + 1)]
    missed = [s for s in due if tick_at - s > GRACE]
    on_time = [s for s in due if tick_at - s <= GRACE]
    catch_up = {"skip": [], "once": missed[-1:], "all": missed}[misfire]
    later = [float(s) for s in range(int(tick_at) + 1, int(until) + 1)]
    return catch_up + on_time + later, missed


@pytest.mark.parametrize(("misfire", "catch_ups"), [("skip", "0"), ("once", "1"), ("all", "N")])
def test_a_scheduler_restarted_after_5_s_down_catches_up_as_misfire_says(
    spool_root: Path, config_path: Path, start_scheduler: Start, misfire: str, catch_ups: str
) -> None:
    config = write_config(config_path, {"tick": tick(misfire=misfire)})
    first = start_scheduler(config)
    wait_until(lambda: len(slots(spool_root)) >= 2, timeout=15)
    kill(first)
    killed_at = time.time()
    last_fired = slots(spool_root)[-1]
    wait_until(lambda: time.time() >= killed_at + 5, timeout=10)  # 5 s with no scheduler
    restarted_at = time.time()
    second = start_scheduler(config)
    wait_until(lambda: slots(spool_root)[-1] >= restarted_at + 2, timeout=15)
    assert stop(second) == 0

    after = [(s, at) for s, at in fired(spool_root) if s > last_fired]
    got = [s for s, _ in after]
    assert len(got) == len(set(got)), "a slot was enqueued twice"
    # The first tick ran at some instant between the restart and the first enqueue after it:
    # find the instants (1 ms apart) at which the outcome is exactly what the policy says.
    first_enqueue = min(at for _, at in after)
    instants = [
        restarted_at + ms / 1000 for ms in range(int((first_enqueue - restarted_at) * 1000) + 1)
    ]
    matches = [
        t for t in instants if expected_after_restart(misfire, last_fired, t, got[-1])[0] == got
    ]
    assert matches, f"{misfire}: enqueued {got} after the last slot fired {last_fired}"
    missed = expected_after_restart(misfire, last_fired, matches[0], got[-1])[1]
    assert len(missed) >= 4
    catch_up = [s for s in got if s in missed]
    assert len(catch_up) == {"0": 0, "1": 1, "N": len(missed)}[catch_ups]
    print(f"misfire={misfire}: {len(missed)} slots missed while down, {len(catch_up)} caught up")


def test_a_scheduler_killed_right_after_a_slot_and_restarted_within_it_does_not_repeat_it(
    spool_root: Path, config_path: Path, start_scheduler: Start
) -> None:
    config = write_config(config_path, {"tick": tick(grace=0.9, misfire="all")})
    first = start_scheduler(config)
    wait_until(lambda: slots(spool_root), timeout=15)
    kill(first)
    slot = slots(spool_root)[-1]
    second = start_scheduler(config)
    wait_until(lambda: slots(spool_root)[-1] >= slot + 2, timeout=15)
    assert stop(second) == 0
    fired_slots = slots(spool_root)
    assert fired_slots.count(slot) == 1
    assert len(fired_slots) == len(set(fired_slots))
    assert fired_slots == [fired_slots[0] + i for i in range(len(fired_slots))]


def test_a_scheduler_killed_before_recording_its_slot_does_not_enqueue_it_again_on_restart(
    spool_root: Path, config_path: Path, start_scheduler: Start
) -> None:
    # The slot's marker and task exist, but `last` does not: the restarted scheduler finds the
    # slot due (within grace) and must lose the O_EXCL race against the dead one's marker.
    config = write_config(config_path, {"tick": tick(every="2s", grace=1.9, misfire="all")})
    first = start_scheduler(config)
    wait_until(lambda: slots(spool_root), timeout=15)
    kill(first)
    slot = slots(spool_root)[-1]
    last = spool_root / ".schedule" / "tick" / "last"
    last.unlink(missing_ok=True)  # under load the kill can come before it was written
    second = start_scheduler(config)
    wait_until(last.exists, timeout=10)
    wait_until(lambda: slots(spool_root)[-1] >= slot + 2, timeout=15)
    assert stop(second) == 0
    assert slots(spool_root).count(slot) == 1
    assert slots(spool_root).count(slot + 2) == 1


# --- recovery of a slot whose scheduler died between marker and enqueue -----------------------


def test_a_stale_marker_without_its_task_is_enqueued_once_by_the_next_scheduler_at_start(
    spool_root: Path, config_path: Path, start_scheduler: Start
) -> None:
    config = write_config(config_path, {"tick": tick(misfire="skip")})
    slot = float(int(time.time()) - 20)
    markers = spool_root / ".schedule" / "tick"
    markers.mkdir(parents=True)
    marker = markers / compact(slot)
    marker.write_text(json.dumps({"scheduler": "dead-1", "claimed_at": slot}))
    os.utime(marker, (slot, slot))

    first = start_scheduler(config)
    # housekeeping runs every 30 s, and at start: the slot comes back well before that
    wait_until(lambda: slot in slots(spool_root), timeout=10)
    wait_until(lambda: (markers / f"{marker.name}.sent").exists(), timeout=5)
    assert stop(first) == 0
    newest = slots(spool_root)[-1]
    second = start_scheduler(config)  # its housekeeping at start finds the marker sent
    wait_until(lambda: slots(spool_root)[-1] > newest, timeout=15)
    assert stop(second) == 0
    assert slots(spool_root).count(slot) == 1


def test_a_stale_marker_whose_task_exists_is_only_marked_sent(
    spool_root: Path, config_path: Path, start_scheduler: Start
) -> None:
    config = write_config(config_path, {"tick": tick(misfire="skip")})
    slot = float(int(time.time()) - 20)
    task_id = f"sched.tick.{compact(slot)}"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["--root", str(spool_root), "--config", str(config), "enqueue", "echo", "--id", task_id],
    )
    assert result.exit_code == 0, result.output
    markers = spool_root / ".schedule" / "tick"
    markers.mkdir(parents=True)
    marker = markers / compact(slot)
    marker.write_text("{}")
    os.utime(marker, (slot, slot))

    proc = start_scheduler(config)
    wait_until(lambda: (markers / f"{marker.name}.sent").exists(), timeout=10)
    assert stop(proc) == 0
    assert slots(spool_root).count(slot) == 1


# --- signals, config errors, reload -----------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_scheduler_stops_with_exit_code_0_on_sigterm_and_sigint(
    spool_root: Path, config_path: Path, start_scheduler: Start, signum: int
) -> None:
    config = write_config(config_path, {"tick": tick(every="1h")})
    proc = start_scheduler(config)
    wait_until(lambda: (spool_root / ".schedule" / "tick" / "last").exists(), timeout=10)
    proc.send_signal(signum)  # it sleeps towards the next hour
    assert proc.wait(timeout=10) == 0


BAD_SCHEDULES: list[tuple[dict[str, Any], str]] = [
    ({"task": "echo", "cron": "61 * * * *"}, "cron '61 * * * *'"),
    ({"task": "echo", "every": "1s", "evry": "2s"}, "unknown key 'evry'"),
    ({"task": "echo", "every": "1s", "cron": "* * * * *"}, "exactly one of cron or every"),
    ({"task": "no_such_task", "every": "1s"}, "unknown task 'no_such_task'"),
    ({"task": "echo", "every": "1s", "timezone": "Europe/Pariss"}, "unknown timezone"),
    ({"task": "echo", "cron": "0 0 31 2 *"}, "never fires"),
]


@pytest.mark.parametrize(("table", "message"), BAD_SCHEDULES)
def test_a_bad_schedule_entry_stops_the_scheduler_at_start_with_one_line_and_exit_code_2(
    spool_root: Path, config_path: Path, table: dict[str, Any], message: str
) -> None:
    config = write_config(config_path, {"good": tick(), "bad": table})
    done = subprocess.run(
        scheduler_command(spool_root, config, "scheduler"),
        cwd=PROJECT_DIR, env=scheduler_env(spool_root), capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if "[schedule.bad]" in line]
    assert message in line
    assert not (spool_root / "default").exists()


def test_a_new_entry_in_the_config_file_starts_firing_without_a_restart(
    spool_root: Path, config_path: Path, start_scheduler: Start
) -> None:
    config = write_config(config_path, {"tick": tick()})
    proc = start_scheduler(config)
    wait_until(lambda: slots(spool_root), timeout=15)
    assert slots(spool_root, "tock") == []
    write_config(config, {"tick": tick(), "tock": tick(every="2s")})
    wait_until(lambda: slots(spool_root, "tock"), timeout=10)
    newest = slots(spool_root)[-1]
    wait_until(lambda: slots(spool_root)[-1] > newest, timeout=5)  # tick goes on
    assert proc.poll() is None
    assert stop(proc) == 0


def test_sighup_reloads_the_config(
    spool_root: Path, config_path: Path, start_scheduler: Start
) -> None:
    config = write_config(config_path, {"tick": tick()})
    proc = start_scheduler(config)
    wait_until(lambda: slots(spool_root), timeout=15)
    write_config(config, {"tock": tick()})
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: slots(spool_root, "tock"), timeout=10)
    assert stop(proc) == 0


def test_a_config_file_rewritten_in_place_with_a_bad_entry_keeps_the_current_schedule(
    spool_root: Path, config_path: Path, start_scheduler: Start
) -> None:
    # Broke once: the watcher reloaded the file as soon as it was truncated, and an empty
    # config is a valid one with no schedule, which the bad version then did not replace.
    config = write_config(config_path, {"tick": tick()})
    proc = start_scheduler(config)
    wait_until(lambda: slots(spool_root), timeout=15)
    write_config(config, {"tick": tick(), "bad": {"task": "echo", "cron": "nope"}})
    newest = slots(spool_root)[-1]
    wait_until(lambda: slots(spool_root)[-1] >= newest + 2, timeout=10)
    assert proc.poll() is None
    assert stop(proc) == 0


# --- spool schedule ls / run ------------------------------------------------------------------


def invoke(root: Path, config: Path, *args: str) -> Any:
    argv = ["--root", str(root), "--config", str(config), *args]
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def test_schedule_ls_json_lists_next_runs_and_never_fired(
    spool_root: Path, config_path: Path
) -> None:
    digest = {"task": "echo", "cron": "0 8 * * 1-5", "timezone": "Europe/Paris"}
    config = write_config(config_path, {"tick": tick(), "digest": digest})
    before = time.time()
    result = invoke(spool_root, config, "schedule", "ls", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"tick", "digest"}
    assert rows["tick"]["last_fired"] is None and rows["digest"]["last_fired"] is None
    ticks = [datetime.fromisoformat(text).timestamp() for text in rows["tick"]["next"]]
    assert len(ticks) == 3 and ticks[0] > before - 1
    assert [b - a for a, b in itertools.pairwise(ticks)] == [1.0, 1.0]
    mornings = [datetime.fromisoformat(text) for text in rows["digest"]["next"]]
    assert len(mornings) == 3
    assert all((m.hour, m.minute) == (8, 0) and m.weekday() < 5 for m in mornings)
    assert {m.utcoffset() for m in mornings} <= {timedelta(hours=1), timedelta(hours=2)}
    assert rows["digest"]["timezone"] == "Europe/Paris"


def test_schedule_ls_json_shows_the_last_slot_fired(
    spool_root: Path, config_path: Path, start_scheduler: Start
) -> None:
    config = write_config(config_path, {"tick": tick()})
    proc = start_scheduler(config)
    wait_until(lambda: slots(spool_root), timeout=15)
    assert stop(proc) == 0
    result = invoke(spool_root, config, "schedule", "ls", "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert datetime.fromisoformat(row["last_fired"]).timestamp() == slots(spool_root)[-1]
    assert all(datetime.fromisoformat(t).timestamp() > slots(spool_root)[-1] for t in row["next"])


def test_schedule_ls_text_says_never_before_the_first_run(
    spool_root: Path, config_path: Path
) -> None:
    config = write_config(config_path, {"tick": tick()})
    result = invoke(spool_root, config, "schedule", "ls")
    assert result.exit_code == 0, result.output
    assert "tick: echo on default, every 1s, misfire=once" in result.stdout
    assert "last fired: never" in result.stdout


def test_schedule_run_enqueues_one_task_now_and_prints_its_id(
    spool_root: Path, config_path: Path
) -> None:
    entry = tick(task="add", args=[2, 3], queue="math", priority=7)
    config = write_config(config_path, {"sum": entry})
    result = invoke(spool_root, config, "schedule", "run", "sum")
    assert result.exit_code == 0, result.output
    task_id = result.stdout.strip()
    [file_name] = names(spool_root / "math" / "incoming")
    assert id_of_name(file_name) == task_id
    task = json.loads((spool_root / "math" / "incoming" / file_name).read_bytes())
    assert (task["task"], task["args"], task["priority"]) == ("add", [2, 3], 7)
    again = invoke(spool_root, config, "schedule", "run", "sum")
    assert again.stdout.strip() != task_id
    assert len(names(spool_root / "math" / "incoming")) == 2


def test_schedule_run_of_an_unknown_entry_is_a_usage_error_naming_the_entries(
    spool_root: Path, config_path: Path
) -> None:
    config = write_config(config_path, {"tick": tick()})
    result = invoke(spool_root, config, "schedule", "run", "tock")
    assert result.exit_code == 2
    assert "no schedule entry 'tock' (entries: tick)" in result.stderr
    assert not (spool_root / "default").exists()


def test_a_schedule_without_a_queue_goes_to_the_queue_its_task_declares(
    spool_root: Path, config_path: Path, start_worker: Any
) -> None:
    config = write_config(
        config_path, {"mailer": {"task": "send_mail", "args": ["ops@b.c"], "every": "1h"}}
    )
    start_worker("-q", "mail")
    wait_until(lambda: any(spool_root.joinpath(".tasks").glob("*.json")), timeout=30)
    listed = invoke(spool_root, config, "schedule", "ls")
    assert "mailer: send_mail on mail, every 3600s" in listed.stdout
    fired = invoke(spool_root, config, "schedule", "run", "mailer")
    assert fired.exit_code == 0, fired.output
    done = spool_root / "mail" / "done"
    wait_until(lambda: done.is_dir() and len(list(done.glob("*.json"))) == 1, timeout=30)
