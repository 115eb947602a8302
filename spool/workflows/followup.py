"""Follow-ups: tasks enqueued because another task ended (a task file's `then` and
`then_on_failure`, a batch's callbacks), each exactly once, also across crashes.

A follow-up's id is derived from what caused it (the parent task's id, or the batch's) and its
place in the list, so whoever ends the parent computes the same id: its worker, or the recovery
that replays the end of a worker that died after writing the outcome (see finish.recover).
Sending one is two steps:

    1. its marker <root>/.followups/<id>.json, created with O_EXCL, holding the follow-up as it
       will be written (its queue, its file name, its content);
    2. the task file, written under that name in its queue.

Whoever creates the marker writes the task. Whoever finds the marker already there (a replay
after a crash between the two steps, or a second member of a batch seeing it complete) writes
the task from the marker's content only if the task is nowhere in the spool (lookup.locate)
for MARKER_SETTLE_SECONDS (time for a live creator to write it), so it is the same file under
the same name, and only when the creator is gone. Nothing here renames onto a common name to
decide a winner: on GlusterFS, MooseFS and JuiceFS two hosts renaming onto the same target can
both succeed; O_EXCL creates have one winner.

The parent's result (or, after a failure, its error; for a batch, its summary) is put first in
the follow-up's args when the follow-up says `"pass_result": true`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from spool import envelope
from spool.envelope import JSON, TaskDict, follow_up_id
from spool.errors import InvalidTask
from spool.faults import crash_point
from spool.fsio import write_atomic, write_file
from spool.layout import QueueDirs, ensure_dir, queue_dirs
from spool.lookup import locate
from spool.manifest import Catalog
from spool.producer import admit, prepare_at

log = logging.getLogger(__name__)

MARKER_SETTLE_SECONDS = 2.0  # a marker still torn after this was left by a dead writer


def followups_dir(root: Path) -> Path:
    return root / ".followups"


def build(
    root: Path,
    catalog: Catalog,
    spec: TaskDict,
    task_id: str,
    value: JSON,
    extra: TaskDict,
    now: float,
) -> tuple[QueueDirs, TaskDict, Path]:
    """The follow-up `spec` as it will be written: its queue, content and destination.
    Raises: InvalidTask."""
    task: TaskDict = {k: v for k, v in spec.items() if k != "pass_result"}
    if spec.get("pass_result") is True:
        task["args"] = [value, *task.get("args", [])]
    task.update(extra, id=task_id)
    routed = admit(catalog, task, None, check=False)
    prepared = prepare_at(root, routed, None, now)
    return prepared.dirs, prepared.task, prepared.dest


def send(
    root: Path,
    catalog: Catalog,
    spec: TaskDict,
    task_id: str,
    value: JSON,
    extra: TaskDict,
    *,
    durable: bool,
) -> bool:
    """Enqueue the follow-up `spec` as `task_id` unless it was enqueued before; return whether
    this call wrote it. Raises: InvalidTask (the spec cannot be a task); OSError."""
    marker = followups_dir(root) / f"{task_id}.json"
    dirs, task, dest = build(root, catalog, spec, task_id, value, extra, time.time())
    record = {"queue": dirs.name, "state": dest.parent.name, "name": dest.name, "task": task}
    ensure_dir(marker.parent)
    try:
        write_file(marker, json.dumps(record).encode(), durable=durable)
    except FileExistsError:
        # RACE: its creator may be writing the task now (two members of a batch that both saw
        # it complete); CRASH: or it died between the marker and the task (a replayed end)
        found = settled_record(marker, record, durable)
        if task_appears(root, task_id, str(found["queue"])):
            return False
        dirs = queue_dirs(root, str(found["queue"]))
        dest = dirs.state(str(found["state"])) / str(found["name"])
        task = found["task"]
    # CRASH: the marker without the task: a replay finds the task nowhere and writes it
    crash_point("after-follow-up-marker")
    write_atomic(envelope.dump(task), dirs.create().tmp, dest, durable=durable)
    log.info("follow-up %s enqueued in %s", task_id, dirs.name)
    return True


def task_appears(root: Path, task_id: str, queue: str) -> bool:
    """Whether the task is (or, within MARKER_SETTLE_SECONDS, comes to be) in the spool."""
    deadline = time.monotonic() + MARKER_SETTLE_SECONDS
    while locate(root, task_id, [queue]) is None:
        if time.monotonic() >= deadline:
            return False  # its marker's writer died before the task: the caller writes it
        time.sleep(0.1)
    return True


def settled_record(marker: Path, fallback: TaskDict, durable: bool) -> TaskDict:
    """The content of a marker another writer created: waited for while it is being written
    (torn), replaced by `fallback` when its writer died before finishing it."""
    deadline = time.monotonic() + MARKER_SETTLE_SECONDS
    while True:
        try:
            record = json.loads(marker.read_bytes())
            if isinstance(record, dict) and isinstance(record.get("task"), dict):
                return record
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    tmp = marker.parent
    write_atomic(json.dumps(fallback).encode(), tmp, marker, durable=durable)
    return fallback


def send_all(
    root: Path,
    specs: list[JSON],
    cause: str,
    kind: str,
    value: JSON,
    extra: TaskDict,
    *,
    durable: bool,
) -> None:
    """Send each follow-up of a list; one that cannot be a task is logged and skipped (its
    fields were checked when its parent was enqueued, so only a vanished queue gets here).
    Raises: OSError."""
    catalog = Catalog.load(root)  # (routes every follow-up of the list: read once)
    for number, spec in enumerate(specs, 1):
        if not isinstance(spec, dict):
            continue
        task_id = follow_up_id(cause, kind, number)
        try:
            send(root, catalog, spec, task_id, value, extra, durable=durable)
        except InvalidTask as exc:
            log.error("follow-up %s of %s is no task, not enqueued: %s", task_id, cause, exc)


def after_end(root: Path, task: TaskDict, state: str, *, durable: bool) -> None:
    """Send a task's follow-ups for how it ended: `then` after done, `then_on_failure` after
    failed (a cancelled task sends none). Raises: OSError."""
    parent = str(task.get("id"))
    extra: TaskDict = {"parent": parent}
    if state == "done" and isinstance(task.get("then"), list):
        send_all(root, task["then"], parent, "then", task.get("result"), extra, durable=durable)
    elif state == "failed" and isinstance(task.get("then_on_failure"), list):
        specs = task["then_on_failure"]
        send_all(root, specs, parent, "fail", task.get("error"), extra, durable=durable)


def follow_up_ids(task: TaskDict) -> dict[str, list[str]]:
    """The ids the task's follow-ups have (or will have), by kind (`spool show`)."""
    parent = str(task.get("id"))
    ids: dict[str, list[str]] = {}
    for key, kind in (("then", "then"), ("then_on_failure", "fail")):
        specs = task.get(key)
        if isinstance(specs, list):
            ids[key] = [follow_up_id(parent, kind, n) for n in range(1, len(specs) + 1)]
    return ids
