"""A full disk (a real 1 MiB tmpfs on the spool root, see tests.fulldisk): producers say so in
one line and leave nothing behind; workers never exit, never run a finished handler again, and
go on once space is freed.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spool import Spool
from spool.config import Settings
from spool.errors import DiskFault, SpoolError
from spool.faults import Backoff, Complaint, reported_as
from spool.layout import QueueDirs
from spool.manage import resume
from spool.producer import prepare
from spool.services.mqtt_intake import Received, Verdict, write_batch
from spool.stats import WorkerStats, load_all
from tests.conftest import PROJECT_DIR, TEST_CONFIG, spool_command, wait_until
from tests.fulldisk import FullDisk

Starter = Callable[..., subprocess.Popen[bytes]]


def every_entry(directory: Path) -> list[str]:
    """All names in `directory`, dot-names too."""
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def leftovers(root: Path) -> dict[str, list[str]]:
    """What tmp/, incoming/, delayed/ and .unique/ of the default queue hold (dot-names too)."""
    base = root / "default"
    return {d: every_entry(base / d) for d in ("tmp", "incoming", "delayed", ".unique")}


NOTHING = {"tmp": [], "incoming": [], "delayed": [], ".unique": []}


def run_cli(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`spool ARGS`, output captured (enqueues pass --no-check: no worker published here)."""
    return subprocess.run(
        spool_command(root, *args),
        cwd=PROJECT_DIR,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- pauses and log lines ---------------------------------------------------------------


def test_a_backoff_doubles_from_its_first_pause_up_to_its_cap_and_starts_over_when_reset() -> None:
    backoff = Backoff(first=0.25, cap=5.0)
    assert [backoff.next_pause() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next_pause() == 0.25


def test_a_repeating_failure_is_logged_the_first_time_then_once_a_minute() -> None:
    complaint = Complaint()
    assert [complaint.due(t) for t in (100.0, 101.0, 159.0, 160.0, 161.0)] == [
        True, False, False, True, False,
    ]  # fmt: skip
    assert complaint.clear() is True
    assert complaint.clear() is False
    assert complaint.due(162.0) is True


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.ENOSPC, "No space left on device (ENOSPC)"),
        (errno.EDQUOT, "Disk quota exceeded (EDQUOT)"),
        (errno.EIO, "Input/output error (EIO)"),
    ],
)
def test_a_full_disk_a_used_up_quota_and_an_io_error_each_read_as_one_line(
    code: int, text: str, tmp_path: Path
) -> None:
    with pytest.raises(DiskFault) as caught, reported_as("enqueue", tmp_path):
        raise OSError(code, os.strerror(code))
    assert str(caught.value) == f"cannot enqueue: {text} in {tmp_path}"
    assert caught.value.errno == code


def test_other_os_errors_are_not_taken_for_disk_faults() -> None:
    with pytest.raises(PermissionError), reported_as("enqueue"):
        raise PermissionError(errno.EACCES, "Permission denied")


# ---- producers ---------------------------------------------------------------------------


def test_enqueue_on_a_full_disk_exits_1_with_one_line_and_leaves_no_file(
    spool_root: Path, full_disk: FullDisk
) -> None:
    full_disk.fill()
    done = run_cli(spool_root, "enqueue", "--no-check", "echo", "x")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "No space left on device (ENOSPC)" in lines[0]
    assert leftovers(spool_root) == NOTHING


def test_enqueue_with_a_unique_key_on_a_full_disk_leaves_the_key_free(
    app: Spool, spool_root: Path, full_disk: FullDisk
) -> None:
    full_disk.fill()
    done = run_cli(spool_root, "enqueue", "--no-check", "echo", "x", "--unique", "k")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert leftovers(spool_root) == NOTHING
    full_disk.free()
    first = app.enqueue("echo", args=["y"], unique_key="k")
    assert app.state_of(first) == "incoming"  # not the id of a task that was never written


def test_enqueue_from_a_file_on_a_full_disk_exits_1_with_one_line_and_leaves_no_file(
    spool_root: Path, full_disk: FullDisk
) -> None:
    lines = "".join(json.dumps({"task": "echo", "args": [i]}) + "\n" for i in range(50))
    full_disk.fill()
    done = run_cli(spool_root, "enqueue", "--no-check", "--from", "-", stdin=lines)
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "ENOSPC" in done.stderr
    assert leftovers(spool_root) == NOTHING


def test_app_enqueue_on_a_full_disk_raises_a_disk_fault_chained_to_the_os_error(
    app: Spool, spool_root: Path, full_disk: FullDisk
) -> None:
    full_disk.fill()
    with pytest.raises(DiskFault) as caught:
        app.enqueue("echo", args=["x"])
    assert isinstance(caught.value, SpoolError)
    assert caught.value.errno == errno.ENOSPC
    assert isinstance(caught.value.__cause__, OSError)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("cannot enqueue: No space left on device")
    with pytest.raises(DiskFault):
        app.enqueue_many([{"task": "echo", "args": [i]} for i in range(20)])
    assert leftovers(spool_root) == NOTHING
    full_disk.free()
    assert app.state_of(app.enqueue("echo", args=["x"])) == "incoming"


def test_post_tasks_on_a_full_disk_answers_507_with_one_sentence(
    spool_root: Path, full_disk: FullDisk
) -> None:
    from tests.test_web import client_for, enqueue, settings_for

    full_disk.fill()
    with client_for(settings_for(spool_root)) as client:
        one = enqueue(client, {"task": "echo", "args": [1]})
        many = enqueue(client, [{"task": "echo", "args": [i]} for i in range(5)])
    for response in (one, many):
        assert response.status_code == 507
        message = response.json()["error"]
        assert message.startswith("cannot enqueue: No space left on device")
        assert message.endswith(".") and "\n" not in message
    assert leftovers(spool_root) == NOTHING


# ---- workers -----------------------------------------------------------------------------


def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"  # beside the mount, not on it


def start_logged(
    start_worker: Starter, tmp_path: Path, config: Path = TEST_CONFIG
) -> subprocess.Popen[bytes]:
    with open(worker_log(tmp_path), "ab") as log:
        return start_worker(stderr=log.fileno(), config=config)


def status_of(root: Path) -> dict[str, Any]:
    done = run_cli(root, "status", "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def waiting_seconds(root: Path) -> float:
    """How long the one live worker has held outcomes the disk refused (0.0 if none)."""
    workers = status_of(root)["workers"]
    return float(workers[0]["outcomes_waiting_seconds"] or 0.0) if workers else 0.0


def runs(side_effects: Path) -> list[str]:
    """Values the `record` handler appended, one line per run."""
    return [line.split()[0] for line in side_effects.read_text().splitlines()]


def claimed_while_full(
    app: Spool,
    full_disk: FullDisk,
    start_worker: Starter,
    tmp_path: Path,
    values: list[str],
    config: Path = TEST_CONFIG,
) -> tuple[subprocess.Popen[bytes], list[str], Path]:
    """A running worker; tasks `record(values...)` enqueued while the queue is paused; the disk
    filled; the queue resumed (an unlink works on a full disk): the worker claims them now.
    The handler appends to a file outside the mount: its side effects are counted."""
    dirs = QueueDirs(app.root, "default").create()
    dirs.pause_marker.touch()  # (empty: its unlink frees no block the worker could write to)
    side_effects = tmp_path / "side-effects.txt"  # outside the full mount
    ids = [app.enqueue("record", args=[str(side_effects), value]) for value in values]
    worker = start_logged(start_worker, tmp_path, config)
    wait_until(lambda: b"started:" in worker_log(tmp_path).read_bytes(), timeout=20)
    full_disk.fill()
    resume(dirs)
    return worker, ids, side_effects


def test_a_worker_started_on_a_full_disk_stays_alive_and_serves_once_space_is_freed(
    app: Spool, full_disk: FullDisk, start_worker: Starter, tmp_path: Path
) -> None:
    task_id = app.enqueue("echo", args=["served"])
    full_disk.fill()
    worker = start_logged(start_worker, tmp_path)
    log = worker_log(tmp_path)
    wait_until(lambda: b"cannot start" in log.read_bytes() or worker.poll() is not None, 20)
    assert worker.poll() is None, log.read_text()
    full_disk.free()
    wait_until(lambda: app.state_of(task_id) == "done", timeout=30)
    assert worker.poll() is None
    text = log.read_text()
    assert text.count("cannot start") == 1, text
    assert "Traceback" not in text


def test_a_handler_whose_outcome_cannot_be_written_runs_once_and_ends_in_done_once_space_returns(
    app: Spool, full_disk: FullDisk, start_worker: Starter, tmp_path: Path
) -> None:
    worker, [task_id], side_effects = claimed_while_full(
        app, full_disk, start_worker, tmp_path, ["once"]
    )
    wait_until(lambda: waiting_seconds(app.root) >= 3.0, timeout=30)  # tried again meanwhile
    assert runs(side_effects) == ["once"]
    assert every_entry(app.root / "default" / "incoming") == []  # not given back
    assert every_entry(app.root / "default" / "done") == []
    assert status_of(app.root)["queues"]["default"]["processing"] == 1  # still claimed
    assert app.state_of(task_id) == "processing"
    full_disk.free()
    wait_until(lambda: app.state_of(task_id) == "done", timeout=30)
    assert runs(side_effects) == ["once"]
    assert app.show(task_id)["attempts"] == 1
    wait_until(lambda: waiting_seconds(app.root) == 0.0)
    assert worker.poll() is None
    text = worker_log(tmp_path).read_text()
    assert text.count("cannot record the outcome") == 1, text  # at most once a minute
    assert "Traceback" not in text


def test_a_worker_waiting_to_write_an_outcome_claims_nothing_new(
    app: Spool, full_disk: FullDisk, start_worker: Starter, tmp_path: Path
) -> None:
    config = tmp_path / "batch-of-two.toml"  # (the tasks of a batch handed over may all run)
    config.write_text(TEST_CONFIG.read_text().replace("[workers]", "[workers]\nclaim_batch = 2"))
    _, ids, side_effects = claimed_while_full(
        app, full_disk, start_worker, tmp_path, ["a", "b", "c"], config
    )
    wait_until(lambda: waiting_seconds(app.root) >= 3.0, timeout=30)
    # the first outcome is written while the next attempt runs: that one was claimed already
    assert runs(side_effects) == ["a", "b"]
    assert len(every_entry(app.root / "default" / "incoming")) == 1
    full_disk.free()
    wait_until(lambda: all(app.state_of(i) == "done" for i in ids), timeout=30)
    assert runs(side_effects) == ["a", "b", "c"]


def test_status_and_metrics_show_the_waiting_outcome_while_the_disk_is_full(
    app: Spool, full_disk: FullDisk, start_worker: Starter, tmp_path: Path
) -> None:
    _, [task_id], _ = claimed_while_full(app, full_disk, start_worker, tmp_path, ["x"])
    wait_until(lambda: waiting_seconds(app.root) > 0.0, timeout=30)
    [worker] = status_of(app.root)["workers"]
    assert worker["outcomes_waiting"] is True
    text = run_cli(app.root, "status").stdout
    assert "OUTCOMES WAITING for the disk" in text
    metrics = run_cli(app.root, "metrics").stdout
    assert "spool_workers_outcomes_waiting 1.0" in metrics
    full_disk.free()
    wait_until(lambda: app.state_of(task_id) == "done", timeout=30)
    wait_until(lambda: status_of(app.root)["workers"][0]["outcomes_waiting"] is False)
    assert "spool_workers_outcomes_waiting 0.0" in run_cli(app.root, "metrics").stdout


def test_a_stop_signal_while_an_outcome_waits_writes_it_once_the_disk_frees_then_exits_0(
    app: Spool, full_disk: FullDisk, start_worker: Starter, tmp_path: Path
) -> None:
    worker, [task_id], side_effects = claimed_while_full(
        app, full_disk, start_worker, tmp_path, ["kept"]
    )
    wait_until(lambda: waiting_seconds(app.root) > 0.0, timeout=30)
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: b"wait for the disk" in worker_log(tmp_path).read_bytes())
    assert worker.poll() is None
    full_disk.free()
    assert worker.wait(timeout=30) == 0
    assert app.state_of(task_id) == "done"
    assert runs(side_effects) == ["kept"]


def test_a_worker_killed_while_outcomes_wait_for_the_disk_counts_each_run_again_as_lost(
    app: Spool, full_disk: FullDisk, start_worker: Starter, tmp_path: Path
) -> None:
    config = tmp_path / "batch-of-two.toml"  # a and b handed over at once: both run
    config.write_text(TEST_CONFIG.read_text().replace("[workers]", "[workers]\nclaim_batch = 2"))
    side_effects = tmp_path / "side-effects.txt"  # outside the full mount
    warm_up = [app.enqueue("record", args=[str(side_effects), f"w{i}"]) for i in range(3)]
    worker = start_logged(start_worker, tmp_path, config)  # (its hand-over list has a page now)
    wait_until(lambda: all(app.state_of(i) == "done" for i in warm_up), timeout=30)
    dirs = QueueDirs(app.root, "default")
    # a page freed on the full disk takes a small outcome: the committer drops the last claims
    # a round after their outcomes show, and the worker its hand-over list as an outcome
    # waits; so wait for the first, and make the outcomes of a and b two pages each
    wait_until(lambda: every_entry(dirs.processing) == [], timeout=30)
    dirs.pause_marker.touch()
    pad = {"pad": "." * 6000}
    ids = [
        app.enqueue("record", args=[str(side_effects), value], kwargs=pad)
        for value in ["a", "b", "c"]
    ]
    full_disk.fill()
    resume(dirs)
    wait_until(lambda: runs(side_effects)[3:] == ["a", "b"], timeout=30)
    wait_until(lambda: waiting_seconds(app.root) > 0.0, timeout=30)
    worker.send_signal(signal.SIGKILL)  # the outcomes of a and b were only in its memory
    worker.wait(timeout=10)
    full_disk.free()
    start_logged(start_worker, tmp_path, config)
    wait_until(lambda: all(app.state_of(i) == "done" for i in ids), timeout=30)
    ran = runs(side_effects)
    for task_id, value in zip(ids, ["a", "b", "c"], strict=True):
        lost = int(app.show(task_id).get("lost") or 0)
        assert ran.count(value) - 1 <= lost, (value, ran, app.show(task_id))


def test_a_hard_stop_while_an_outcome_waits_leaves_the_task_to_recovery_at_least_once(
    app: Spool, full_disk: FullDisk, start_worker: Starter, tmp_path: Path
) -> None:
    worker, [task_id], side_effects = claimed_while_full(
        app, full_disk, start_worker, tmp_path, ["again"]
    )
    wait_until(lambda: waiting_seconds(app.root) > 0.0, timeout=30)
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: b"wait for the disk" in worker_log(tmp_path).read_bytes())
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert "not written" in worker_log(tmp_path).read_text()
    full_disk.free()
    start_logged(start_worker, tmp_path)
    wait_until(lambda: app.state_of(task_id) == "done", timeout=30)
    assert runs(side_effects) == ["again", "again"]  # at least once: the outcome was lost


def test_a_shared_mode_worker_keeps_the_lease_of_a_claim_whose_outcome_waits(
    app: Spool, full_disk: FullDisk, start_worker: Starter, tmp_path: Path
) -> None:
    """Shared mode recovers any claim whose lease runs out, a worker's own included: the
    hidden claim of a waiting outcome stays renewed, so its handler does not run again."""
    lease = 3.0  # (the shortest allowed)
    config = tmp_path / "shared.toml"
    config.write_text(
        TEST_CONFIG.read_text() + f"\n[cluster]\nshared = true\nlease = {lease}\n"
        'poll_interval = "200ms"\n'
    )
    dirs = QueueDirs(app.root, "default").create()
    dirs.pause_marker.touch()
    side_effects = tmp_path / "side-effects.txt"
    task_id = app.enqueue("record", args=[str(side_effects), "leased"])
    with open(worker_log(tmp_path), "ab") as log:
        start_worker(config=config, stderr=log.fileno())
    wait_until(lambda: b"started:" in worker_log(tmp_path).read_bytes(), timeout=20)
    full_disk.fill()
    resume(dirs)
    wait_until(lambda: waiting_seconds(app.root) >= 3 * lease, timeout=30)
    assert runs(side_effects) == ["leased"]
    full_disk.free()
    wait_until(lambda: app.state_of(task_id) == "done", timeout=30)
    assert runs(side_effects) == ["leased"]
    assert "recovered" not in worker_log(tmp_path).read_text()


def test_a_dead_workers_task_that_recovery_cannot_write_back_is_recovered_once_space_returns(
    app: Spool, full_disk: FullDisk, start_worker: Starter, tmp_path: Path
) -> None:
    dirs = QueueDirs(app.root, "default").create()
    dirs.pause_marker.touch()  # (empty: see claimed_while_full)
    task_id = app.enqueue("echo", args=["back"])
    start_logged(start_worker, tmp_path)
    wait_until(lambda: b"started:" in worker_log(tmp_path).read_bytes(), timeout=20)
    full_disk.fill()
    (name,) = every_entry(dirs.incoming)
    os.rename(dirs.incoming / name, dirs.processing / f"{name}@deadhost-4242-abcdef")
    wait_until(lambda: b"cannot recover" in worker_log(tmp_path).read_bytes(), timeout=20)
    full_disk.free()
    resume(dirs)
    wait_until(lambda: app.state_of(task_id) == "done", timeout=30)
    assert app.show(task_id)["attempts"] == 2  # the lost attempt counts


def test_counters_the_full_disk_refuses_stay_in_memory_and_are_written_once_it_frees(
    spool_root: Path, full_disk: FullDisk, caplog: pytest.LogCaptureFixture
) -> None:
    counts = WorkerStats(spool_root, "w-1")
    counts.record("default", "done", 0.5)
    full_disk.fill()
    counts.flush(100.0)  # no exception: counting never stops a worker
    assert counts.dirty
    assert "cannot write the counters" in caplog.text
    full_disk.free()
    counts.flush(101.0)
    assert not counts.dirty
    assert load_all(spool_root)["default"].counts["done"] == 1


def test_an_outcome_that_waited_for_the_disk_has_exactly_one_event(
    app: Spool, full_disk: FullDisk, start_worker: Starter, tmp_path: Path
) -> None:
    config = tmp_path / "events.toml"
    config.write_text(TEST_CONFIG.read_text() + "\n[notify]\nevents = true\n")
    _, [task_id], _ = claimed_while_full(app, full_disk, start_worker, tmp_path, ["told"], config)
    wait_until(lambda: waiting_seconds(app.root) > 0.0, timeout=30)
    assert [n for n in every_entry(app.root / ".events") if n.endswith(".json")] == []
    full_disk.free()
    wait_until(lambda: app.state_of(task_id) == "done", timeout=30)

    def events() -> list[str]:
        return [n for n in every_entry(app.root / ".events") if n.endswith(".json")]

    wait_until(events, timeout=10)  # (written just after the outcome is published)
    found = events()
    assert len(found) == 1 and task_id in found[0] and found[0].endswith("_done.json")


def test_an_mqtt_batch_the_full_disk_refuses_leaves_its_unique_keys_free(
    spool_root: Path, full_disk: FullDisk
) -> None:
    settings = Settings(root=spool_root)
    dirs = QueueDirs(spool_root, "default").create()
    spare = spool_root / "spare"
    spare.write_bytes(b"x")  # one page of the tmpfs, given back once it is full:
    full_disk.fill()  # room for the key file, none for the task file
    spare.unlink()
    task = {"task": "echo", "args": ["x"], "id": "m1", "unique_key": "k"}
    prepared = prepare(settings, task, "default", time.time())
    message = Received(1, 1, "spool/enqueue/default", b"", dup=False)
    batch = [Verdict(message, prepared=prepared, queue="default")]
    with pytest.raises(OSError):
        write_batch(settings, batch)  # (the intake keeps the messages and writes them again)
    full_disk.free()
    write_batch(settings, batch)
    assert every_entry(dirs.incoming) == [prepared.dest.name]  # not skipped as held by itself
