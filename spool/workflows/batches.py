"""Batches: tasks enqueued together, with callbacks enqueued exactly once when every member has
ended (`then` when all are done, `on_failure` when any failed, `finally` in both cases).

A batch is files under <root>/.batches/<id>/, never a counter that a crash could lose or count
twice:

    batch.json              written (O_EXCL) before any member: total, callbacks, created_at
    ended/<k>/<i>.<status>  one empty marker per ended member (index i, bucket k = i // BUCKET),
                            created with O_EXCL by whoever ends it; status done or failed
                            (a cancelled member counts as failed)
    full/<k>                created with O_EXCL once bucket k has a marker for each member

A member's task file carries `batch` (the id) and `batch_index`. The end of a member (see
ends.on_end, also replayed by recovery after a worker died) creates its marker, lists its
bucket (at most BUCKET names), and when that bucket is complete, marks it full and lists full/:
when every bucket is full, the callbacks go out through followup.send with ids derived from the
batch's (<id>.then1, <id>.fail1, <id>.finally1), so two members that both see the batch complete
still enqueue each callback once. No step is a rename onto a common name (see followup).

A member that is retried by an operator after failing and then done adds a `.done` marker; a
member is counted once, as done if it has both. A file rejected before it ran (no task) ends
no member.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from spool.config import Settings
from spool.envelope import (
    JSON,
    FieldError,
    TaskDict,
    follow_up_id,
    is_valid_id,
    new_id,
    validate_follow_ups,
)
from spool.errors import BatchExists, BatchNotFound, InvalidTask
from spool.faults import crash_point, reported_as
from spool.fsio import list_names, write_file
from spool.layout import ensure_dir
from spool.manifest import Catalog
from spool.producer import check_follow_up_names, prepare_many, write_batch
from spool.workflows.followup import followups_dir, send_all

log = logging.getLogger(__name__)

BUCKET = 100
CALLBACKS = (("then", "then"), ("on_failure", "fail"), ("finally", "finally"))


def batch_dir(root: Path, batch_id: str) -> Path:
    return root / ".batches" / batch_id


def create(
    root: Path, batch_id: str, total: int, callbacks: dict[str, list[JSON]], now: float
) -> None:
    """Write the batch's record before its members. Raises: BatchExists; OSError."""
    base = batch_dir(root, batch_id)
    ensure_dir(base)
    record = {"id": batch_id, "total": total, "created_at": now, **callbacks}
    try:
        write_file(base / "batch.json", json.dumps(record).encode(), durable=True)
    except FileExistsError:
        raise BatchExists(batch_id) from None


def read_record(root: Path, batch_id: str) -> dict[str, JSON] | None:
    try:
        with open(os.path.join(root, ".batches", batch_id, "batch.json"), "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def member_ended(root: Path, task: TaskDict, state: str, *, durable: bool) -> None:
    """Count a member's end once, and send the callbacks if it was the last. Raises: OSError."""
    batch_id, index = str(task["batch"]), int(task["batch_index"])
    record = read_record(root, batch_id)
    if record is None:
        log.error("task %s names batch %s, which has no record: not counted", task["id"], batch_id)
        return
    status = "done" if state == "done" else "failed"
    bucket = os.path.join(root, ".batches", batch_id, "ended", str(index // BUCKET))
    # CRASH: a replayed end finds its marker there (FileExistsError); the rest may not be
    try:
        write_file(Path(bucket, f"{index}.{status}"), b"", durable=durable)
    except FileNotFoundError:  # the bucket's first member
        ensure_dir(Path(bucket))
        with contextlib.suppress(FileExistsError):
            write_file(Path(bucket, f"{index}.{status}"), b"", durable=durable)
    except FileExistsError:
        pass
    crash_point("after-batch-marker")
    settle(root, record, index // BUCKET, durable=durable)


def settle(root: Path, record: dict[str, JSON], bucket: int, *, durable: bool) -> bool:
    """Mark bucket `bucket` full if it is, and send the callbacks if every bucket is; return
    whether the batch is complete. Raises: OSError."""
    batch_id, total = str(record["id"]), int(record["total"])
    base = batch_dir(root, batch_id)
    size = min(BUCKET, total - bucket * BUCKET)
    names = list_names(base / "ended" / str(bucket))
    if len(names) < size or len({name.partition(".")[0] for name in names}) < size:
        return False  # (the first test is cheap and usually decides)
    full = base / "full"
    ensure_dir(full)
    with contextlib.suppress(FileExistsError):
        write_file(full / str(bucket), b"", durable=durable)
    # RACE: two members ending at once each list the other's marker or not; on a filesystem
    # that shows a create late, both may miss it: `spool batch ID` settles such a batch.
    if len(list_names(full)) < math.ceil(total / BUCKET):
        return False
    send_callbacks(root, record, durable=durable)
    return True


def indices(bucket: Path) -> dict[int, str]:
    """The ended members of a bucket: index -> done or failed (done wins)."""
    ended: dict[int, str] = {}
    for name in list_names(bucket):
        stem, _, status = name.partition(".")
        if stem.isdigit() and status in ("done", "failed"):
            index = int(stem)
            if ended.get(index) != "done":
                ended[index] = status
    return ended


@dataclass(frozen=True)
class Summary:
    """A batch's progress, from its markers."""

    id: str
    total: int
    done: int
    failed: int
    created_at: float
    callbacks: dict[str, list[str]]  # kind -> the ids its callbacks have (or will have)

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed

    @property
    def complete(self) -> bool:
        return self.pending == 0

    def to_json(self) -> dict[str, JSON]:
        return {
            "id": self.id,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "pending": self.pending,
            "complete": self.complete,
            "created_at": self.created_at,
            "callbacks": self.callbacks,
        }


def summary_of(root: Path, record: dict[str, JSON]) -> Summary:
    batch_id = str(record["id"])
    ended_dir = batch_dir(root, batch_id) / "ended"
    ended: dict[int, str] = {}
    for bucket in list_names(ended_dir):
        ended.update(indices(ended_dir / bucket))
    done = sum(1 for status in ended.values() if status == "done")
    callbacks = {
        key: [follow_up_id(batch_id, kind, n) for n in range(1, len(record.get(key) or []) + 1)]
        for key, kind in CALLBACKS
    }
    created = float(record.get("created_at", 0.0))
    return Summary(batch_id, int(record["total"]), done, len(ended) - done, created, callbacks)


def send_callbacks(root: Path, record: dict[str, JSON], *, durable: bool) -> None:
    """Send the callbacks a complete batch calls for, each exactly once (see followup), then
    mark the batch complete (so settle_open passes it by)."""
    summary = summary_of(root, record)
    value = summary.to_json()
    extra: TaskDict = {"batch_callback": summary.id}
    for key, kind in CALLBACKS:
        specs = record.get(key)
        if key in wanted(summary) and isinstance(specs, list) and specs:
            send_all(root, specs, summary.id, kind, value, extra, durable=durable)
    with contextlib.suppress(FileExistsError):
        write_file(batch_dir(root, summary.id) / "complete", b"", durable=durable)


def settle_open(root: Path) -> int:
    """Send the callbacks of complete batches that no member's end saw complete (two ends at
    once on hosts that showed each other's marker late, see settle); return how many. Workers
    call it now and then. Raises: OSError."""
    settled = 0
    for batch_id in list_names(root / ".batches"):
        base = batch_dir(root, batch_id)
        if os.path.lexists(base / "complete"):
            continue
        record = read_record(root, batch_id)
        if record is None or not summary_of(root, record).complete:
            continue
        settle_all(root, record)
        settled += 1
    return settled


def settle_all(root: Path, record: dict[str, JSON]) -> None:
    """Settle every bucket of a complete batch (a batch of no member: send its callbacks).
    Raises: OSError."""
    total = int(record["total"])
    for bucket in range(math.ceil(total / BUCKET)):
        settle(root, record, bucket, durable=True)
    if total == 0:
        send_callbacks(root, record, durable=True)


def wanted(summary: Summary) -> tuple[str, ...]:
    """The callbacks a complete batch calls for: then (all done) or on_failure, and finally."""
    return ("then" if summary.failed == 0 else "on_failure", "finally")


def summary(root: Path, batch_id: str) -> Summary:
    """The batch's progress, read only. Raises: BatchNotFound."""
    return summary_of(root, found_record(root, batch_id))


def found_record(root: Path, batch_id: str) -> dict[str, JSON]:
    """The batch's record. Raises: BatchNotFound."""
    record = read_record(root, batch_id)
    if record is None:
        raise BatchNotFound(batch_id)
    return record


def status(root: Path, batch_id: str) -> Summary:
    """The batch's progress; a complete batch whose callbacks a missed marker held back (see
    settle) sends them now. Raises: BatchNotFound; OSError."""
    record = found_record(root, batch_id)
    progress = summary_of(root, record)
    if progress.complete and not callbacks_sent(root, progress):
        settle_all(root, record)
    return progress


def callbacks_sent(root: Path, summary: Summary) -> bool:
    ids = [i for key in wanted(summary) for i in summary.callbacks[key]]
    return all(os.path.lexists(followups_dir(root) / f"{i}.json") for i in ids)


def member_fields(batch_id: str, index: int) -> TaskDict:
    """The fields that make a task member `index` of batch `batch_id`."""
    return {"batch": batch_id, "batch_index": index}


def new_batch_id(now: float) -> str:
    return f"batch-{new_id(now)}"


def enqueue_batch(
    settings: Settings,
    members: list[TaskDict],
    callbacks: dict[str, list[JSON]],
    batch_id: str | None = None,
    *,
    catalog: Catalog | None = None,
    check: bool = True,
) -> tuple[str, list[str]]:
    """Make a batch of `members` with `callbacks` (then, on_failure, finally: task objects);
    return its id and the members' ids. Its record is written before the members, which are
    written together (see producer.enqueue_many). Raises: InvalidTask, BatchExists; DiskFault;
    OSError."""
    now = time.time()
    batch_id = batch_id or new_batch_id(now)
    if not is_valid_id(batch_id):
        raise InvalidTask(f"batch id {batch_id!r} must match [A-Za-z0-9._-]{{1,128}}")
    for key, specs in callbacks.items():
        try:
            validate_follow_ups(specs, key)
        except FieldError as exc:
            raise InvalidTask(str(exc)) from None
    tasks = []
    for index, member in enumerate(members):
        if "unique_key" in member:
            raise InvalidTask(f"task {index + 1}: a batch member has no unique_key")
        tasks.append({**member, **member_fields(batch_id, index)})
    catalog = Catalog.load(settings.root) if catalog is None else catalog
    if check and catalog.exists:
        check_follow_up_names(catalog, {"then": [s for specs in callbacks.values() for s in specs]})
    prepared = prepare_many(settings, tasks, None, catalog, check, now)  # before the record
    with reported_as("enqueue", settings.root):
        create(settings.root, batch_id, len(tasks), callbacks, now)
    if prepared:
        with reported_as("enqueue", prepared[0].dirs.base):
            ids = write_batch(settings, prepared)
    else:
        ids = []
        status(settings.root, batch_id)  # nothing to wait for: the callbacks go out now
    return batch_id, ids
