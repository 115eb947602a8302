"""Intake: what a worker does with every file that appears in incoming/.

Bad input goes to failed/ as it is, with <stem>.error.json beside it naming the reason, and
the worker goes on to run a good task. Files spool must not look at stay where they are.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from spool import Spool
from spool.cli import cli
from spool.settle import SETTLE_SECONDS
from tests.conftest import (
    PROJECT_DIR,
    TEST_CONFIG,
    drop_into,
    names,
    run_burst,
    wait_until,
    write_in_place,
)

MIB = 1024 * 1024


def incoming_dir(spool_root: Path, queue: str = "default") -> Path:
    path = spool_root / queue / "incoming"
    path.mkdir(parents=True, exist_ok=True)
    return path


def drop(spool_root: Path, name: str, data: bytes, queue: str = "default") -> Path:
    return drop_into(incoming_dir(spool_root, queue), name, data)


def rejection_note(spool_root: Path, stem: str, queue: str = "default") -> dict[str, object]:
    path = spool_root / queue / "failed" / f"{stem}.error.json"
    note: dict[str, object] = json.loads(path.read_text())
    return note


def run_and_check_worker_still_serves(app: Spool, spool_root: Path) -> None:
    """Enqueue a good task after the bad input, run a burst worker, and see the good task done."""
    good = app.enqueue("echo", args=["still serving"])
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    assert app.show(good)["state"] == "done"
    assert app.show(good)["result"] == "still serving"
    assert [n for n in names(spool_root / "default" / "incoming") if n.endswith(".json")] == []
    assert names(spool_root / "default" / "processing") == []


BAD_CONTENT = [
    ("invalid-json", b'{"task": "echo", "args": [', "invalid JSON"),
    ("empty-file", b"", "invalid JSON"),
    ("json-array", b'["echo", 1]', "must hold a JSON object, not an array"),
    ("json-string", b'"echo"', "must hold a JSON object, not a string"),
    ("json-number", b"42", "must hold a JSON object, not a number"),
    ("unknown-task", b'{"task": "no_such_task"}', "unknown task 'no_such_task'"),
    ("args-not-a-list", b'{"task": "echo", "args": "x"}', "field 'args'"),
    ("kwargs-not-an-object", b'{"task": "echo", "kwargs": [1]}', "field 'kwargs'"),
    ("priority-ten", b'{"task": "echo", "priority": 10}', "field 'priority'"),
    ("priority-a-string", b'{"task": "echo", "priority": "1"}', "field 'priority'"),
    ("id-with-a-path", b'{"task": "echo", "id": "../x"}', "field 'id'"),
    ("max-retries-negative", b'{"task": "echo", "max_retries": -1}', "field 'max_retries'"),
    ("timeout-zero", b'{"task": "echo", "timeout": 0}', "field 'timeout'"),
    ("not-utf-8", b'{"task": "echo", "args": ["caf\xe9"]}', "not UTF-8"),
    ("oversized", b'{"task": "echo", "args": ["' + b"x" * MIB + b'"]}', "over the limit"),
]


@pytest.mark.parametrize(
    ("stem", "data", "reason"), BAD_CONTENT, ids=[case[0] for case in BAD_CONTENT]
)
def test_a_bad_task_file_goes_to_failed_unchanged_with_its_reason_beside_it(
    app: Spool, spool_root: Path, stem: str, data: bytes, reason: str
) -> None:
    drop(spool_root, f"{stem}.json", data)
    run_and_check_worker_still_serves(app, spool_root)
    assert (spool_root / "default" / "failed" / f"{stem}.json").read_bytes() == data
    note = rejection_note(spool_root, stem)
    assert reason in str(note["reason"])
    assert note["file"] == f"{stem}.json"


def test_a_task_file_naming_an_unregistered_function_runs_nothing(
    app: Spool, spool_root: Path, tmp_path: Path
) -> None:
    data = b'{"task": "os.system", "args": ["touch PWNED"]}'
    drop(spool_root, "pwned.json", data)
    run_and_check_worker_still_serves(app, spool_root)
    assert (spool_root / "default" / "failed" / "pwned.json").read_bytes() == data
    assert "unknown task 'os.system'" in str(rejection_note(spool_root, "pwned")["reason"])
    assert list(tmp_path.rglob("PWNED")) == []
    assert not (PROJECT_DIR / "PWNED").exists()
    assert not (Path.cwd() / "PWNED").exists()


def test_a_symlink_is_rejected_without_reading_or_touching_its_target(
    app: Spool, spool_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "secret.json"
    target.write_bytes(b'{"task": "echo", "args": ["secret"]}')
    before = os.stat(target)
    incoming = incoming_dir(spool_root)
    os.symlink(target, incoming / ".link.json.part")
    os.rename(incoming / ".link.json.part", incoming / "link.json")

    run_and_check_worker_still_serves(app, spool_root)

    stored = spool_root / "default" / "failed" / "link.json"
    assert stored.is_symlink()
    assert os.readlink(stored) == str(target)
    assert "symlink" in str(rejection_note(spool_root, "link")["reason"])
    after = os.stat(target)
    assert target.read_bytes() == b'{"task": "echo", "args": ["secret"]}'
    assert (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_mode) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
        before.st_mode,
    )
    assert len(names(spool_root / "default" / "done")) == 1  # only the good task ran


def test_a_hard_linked_file_is_rejected_and_both_links_keep_their_content(
    app: Spool, spool_root: Path, tmp_path: Path
) -> None:
    data = b'{"task": "echo", "args": ["linked"]}'
    other = tmp_path / "other-link.json"
    other.write_bytes(data)
    incoming = incoming_dir(spool_root)
    os.link(other, incoming / ".linked.json.part")
    os.rename(incoming / ".linked.json.part", incoming / "linked.json")

    run_and_check_worker_still_serves(app, spool_root)

    stored = spool_root / "default" / "failed" / "linked.json"
    assert stored.read_bytes() == data
    assert other.read_bytes() == data
    assert os.stat(stored).st_ino == os.stat(other).st_ino
    assert os.stat(other).st_nlink == 2
    assert "hard links" in str(rejection_note(spool_root, "linked")["reason"])
    assert len(names(spool_root / "default" / "done")) == 1  # only the good task ran


def test_a_directory_named_like_a_task_file_is_rejected_with_its_content(
    app: Spool, spool_root: Path
) -> None:
    incoming = incoming_dir(spool_root)
    (incoming / ".x.json.part").mkdir()
    (incoming / ".x.json.part" / "inside.txt").write_text("keep me")
    os.rename(incoming / ".x.json.part", incoming / "x.json")

    run_and_check_worker_still_serves(app, spool_root)

    stored = spool_root / "default" / "failed" / "x.json"
    assert stored.is_dir()
    assert (stored / "inside.txt").read_text() == "keep me"
    assert "directory" in str(rejection_note(spool_root, "x")["reason"])


def test_a_fifo_named_like_a_task_file_is_rejected_without_hanging_the_worker(
    app: Spool, spool_root: Path
) -> None:
    incoming = incoming_dir(spool_root)
    os.mkfifo(incoming / ".x.json.part")
    os.rename(incoming / ".x.json.part", incoming / "x.json")

    run_and_check_worker_still_serves(app, spool_root)  # run_burst has a timeout

    stored = spool_root / "default" / "failed" / "x.json"
    assert stat.S_ISFIFO(os.lstat(stored).st_mode)
    assert "FIFO" in str(rejection_note(spool_root, "x")["reason"])


def test_files_starting_with_a_dot_or_not_ending_in_json_are_never_picked_up(
    app: Spool, spool_root: Path
) -> None:
    data = b'{"task": "echo", "args": ["should not run"]}'
    ignored = [".hidden.json", "notes.txt", "task.json.part", "README", "upper.JSON"]
    incoming = incoming_dir(spool_root)
    for name in ignored:
        (incoming / name).write_bytes(data)  # written in place: spool must not look at them

    run_and_check_worker_still_serves(app, spool_root)

    assert sorted(os.listdir(incoming)) == sorted(ignored)
    for name in ignored:
        assert (incoming / name).read_bytes() == data
    assert names(spool_root / "default" / "failed") == []
    assert len(names(spool_root / "default" / "done")) == 1  # only the good task ran


def test_a_file_written_in_place_slowly_runs_once_it_is_whole(
    app: Spool, spool_root: Path, start_worker
) -> None:
    """The worker sees the file from its first byte on; it must not reject it as invalid JSON
    while the producer is still writing."""
    start_worker()
    write_in_place(incoming_dir(spool_root) / "slow.json", b'{"task": "add", "args": [40, 2]}')
    wait_until(lambda: app.state_of("slow") == "done", timeout=15)
    assert names(spool_root / "default" / "failed") == []
    shown = app.show("slow")
    assert shown["result"] == 42 and shown["attempts"] == 1


def test_a_file_written_in_place_that_stays_broken_is_rejected_once_it_settles(
    app: Spool, spool_root: Path, start_worker
) -> None:
    start_worker()
    write_in_place(incoming_dir(spool_root) / "cut.json", b'{"task": "echo", "args": [', 0.01)
    written = time.monotonic()
    note = spool_root / "default" / "failed" / "cut.error.json"  # written after the move
    wait_until(note.exists, timeout=15)
    assert app.state_of("cut") == "failed"
    assert time.monotonic() - written >= SETTLE_SECONDS * 0.9  # read again until it settled
    assert "invalid JSON" in str(rejection_note(spool_root, "cut")["reason"])
    assert (spool_root / "default" / "failed" / "cut.json").read_bytes() == (
        b'{"task": "echo", "args": ['
    )


def test_a_burst_worker_waits_for_a_file_that_is_not_json_yet_to_settle(
    app: Spool, spool_root: Path
) -> None:
    """A burst worker ends only when nothing is left: not with a file it put back."""
    half = incoming_dir(spool_root) / "half.json"
    half.write_bytes(b'{"task": "ec')
    soon = time.time() + 3  # (looks just written however long the worker takes to start)
    os.utime(half, (soon, soon))
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    assert names(spool_root / "default" / "incoming") == []
    assert app.state_of("half") == "failed"


def test_a_dropped_file_without_an_id_takes_its_stem_as_id(app: Spool, spool_root: Path) -> None:
    drop(spool_root, "order-42.json", b'{"task": "add", "args": [40, 2]}')
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    assert names(spool_root / "default" / "done") == ["order-42.json"]
    shown = app.show("order-42")
    assert shown["id"] == "order-42"
    assert shown["result"] == 42
    assert shown["attempts"] == 1


def test_a_dropped_file_with_an_id_is_stored_under_that_id(app: Spool, spool_root: Path) -> None:
    drop(spool_root, "whatever.json", b'{"task": "add", "args": [1, 2], "id": "my-id"}')
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr
    assert names(spool_root / "default" / "done") == ["my-id.json"]
    assert app.show("my-id")["result"] == 3


def test_a_rejected_file_whose_name_is_no_valid_id_is_stored_under_a_derived_id(
    app: Spool, spool_root: Path
) -> None:
    drop(spool_root, "bad name!.json", b"{")
    run_and_check_worker_still_serves(app, spool_root)
    failed = names(spool_root / "default" / "failed")
    [stored] = [name for name in failed if not name.endswith(".error.json")]
    stem = stored.removesuffix(".json")
    assert failed == sorted([stored, f"{stem}.error.json"])
    assert (spool_root / "default" / "failed" / stored).read_bytes() == b"{"
    assert rejection_note(spool_root, stem)["file"] == "bad name!.json"
    assert app.show(stem)["state"] == "failed"


def test_status_counts_rejected_files_among_the_failed(app: Spool, spool_root: Path) -> None:
    drop(spool_root, "bad-json.json", b"{")
    drop(spool_root, "bad-kind.json", b"[]")
    drop(spool_root, "bad-name.json", b'{"task": "nope"}')
    app.enqueue("unreliable_no_retry")  # fails for good: failed, but not rejected
    result = run_burst(spool_root)
    assert result.returncode == 0, result.stderr

    shown = CliRunner().invoke(
        cli, ["--root", str(spool_root), "--config", str(TEST_CONFIG), "status", "--json"]
    )
    assert shown.exit_code == 0, shown.output
    queue = json.loads(shown.output)["queues"]["default"]
    assert queue["rejected"] == 3
    assert queue["failed"] == 4
    assert queue["incoming"] == queue["processing"] == 0
