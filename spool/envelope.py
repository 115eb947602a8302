"""Task files: parse and validate them, serialise them, make new ids.

A task file is a UTF-8 JSON object; only `task` is required. Validation is strict on the
fields spool reads (a wrong type is a rejection, not a guess) and keeps any other field as
it is, so producers may carry their own metadata.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from spool.errors import InvalidTask
from spool.layout import CANONICAL_RE, ID_RE, QUEUE_RE

JSON: TypeAlias = Any  # a value json.loads can return
TaskDict: TypeAlias = dict[str, JSON]

TASK_NAME_MAX = 200
UNIQUE_KEY_MAX = 1024


class FieldError(ValueError):
    """A task field has a wrong type or value; the message is the reason."""


class NotJSON(FieldError):
    """The bytes are not UTF-8 JSON: a broken file, or one still being written in place."""


def new_id(now: float) -> str:
    """A fresh, time-sortable task id: UTC time to the microsecond plus randomness."""
    return f"{format_compact(now)}-{secrets.token_hex(4)}"


def derived_id(stem: str, mtime: float) -> str:
    """The id of a dropped file without one: its stem when that is a valid id, else made up."""
    if is_valid_id(stem):
        return stem
    digest = hashlib.sha1(stem.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{format_compact(mtime)}-{digest}"


def follow_up_id(cause: str, kind: str, number: int) -> str:
    """The id of the `number`-th (1-based) follow-up of kind `kind` (then, fail, or a batch's
    callback kind) caused by the task or batch with id `cause` (see workflows.followup)."""
    task_id = f"{cause}.{kind}{number}"
    if len(task_id) <= 128:
        return task_id
    digest = hashlib.sha1(cause.encode()).hexdigest()[:20]
    return f"{digest}.{kind}{number}"


def id_of_name(name: str, mtime: float = 0.0) -> str:
    """The id a task file's name stands for: the canonical name's id, or the dropped file's."""
    match = CANONICAL_RE.fullmatch(name)
    if match:
        return match.group(3)
    return derived_id(name.removesuffix(".json"), mtime)


def format_compact(instant: float) -> str:
    whole = math.floor(instant)
    micros = round((instant - whole) * 1_000_000) % 1_000_000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(whole)) + f"{micros:06d}"


def parse_compact(text: str) -> float | None:
    """The instant format_compact wrote (its first 21 characters), or None."""
    if len(text) < 21 or not text[15:21].isdigit():
        return None
    try:
        whole = time.strptime(text[:15], "%Y%m%dT%H%M%S")
    except ValueError:
        return None
    return calendar.timegm(whole) + int(text[15:21]) / 1_000_000


def is_valid_id(value: str) -> bool:
    return (
        bool(ID_RE.fullmatch(value)) and not value.endswith(".error") and value not in (".", "..")
    )


def parse_task_bytes(data: bytes) -> TaskDict:
    """Decode and validate a task file's bytes. Raises: FieldError with the reason."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJSON(f"not UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise NotJSON(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise FieldError("invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise FieldError(f"a task file must hold a JSON object, not {json_kind(obj)}")
    validate_fields(obj)
    return obj


def reject_constant(name: str) -> None:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def json_kind(value: JSON) -> str:
    kinds = [(bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string")]
    kinds += [(list, "an array"), (dict, "an object")]
    for kind, name in kinds:
        if isinstance(value, kind):
            return name
    return "null"


def validate_fields(obj: TaskDict) -> None:
    """Check the fields spool reads. Raises: FieldError naming the field."""
    task = obj.get("task")
    if not isinstance(task, str) or not task:
        raise FieldError("field 'task' is required and must be a non-empty string")
    if len(task) > TASK_NAME_MAX:
        raise FieldError(f"field 'task' is longer than {TASK_NAME_MAX} characters")
    expect(obj, "args", list, "an array")
    expect(obj, "kwargs", dict, "an object")
    if "id" in obj and not (isinstance(obj["id"], str) and is_valid_id(obj["id"])):
        raise FieldError("field 'id' must match [A-Za-z0-9._-]{1,128} (and not end in .error)")
    if "priority" in obj and not (is_int(obj["priority"]) and 0 <= obj["priority"] <= 9):
        raise FieldError("field 'priority' must be an integer from 0 to 9")
    for key in ("delay", "enqueued_at"):
        if key in obj and not (is_number(obj[key]) and obj[key] >= 0):
            raise FieldError(f"field '{key}' must be a number of seconds >= 0")
    if (
        "timeout" in obj
        and obj["timeout"] is not None
        and not (is_number(obj["timeout"]) and obj["timeout"] > 0)
    ):
        raise FieldError("field 'timeout' must be a number of seconds > 0")
    for key in ("max_retries", "attempts", "lost"):
        if key in obj and not (is_int(obj[key]) and obj[key] >= 0):
            raise FieldError(f"field '{key}' must be an integer >= 0")
    if "max_lost" in obj and not (is_int(obj["max_lost"]) and obj["max_lost"] >= 1):
        raise FieldError("field 'max_lost' must be an integer >= 1")
    if "not_before" in obj:
        parse_instant(obj["not_before"], "not_before")
    if "unique_key" in obj and not (
        isinstance(obj["unique_key"], str) and 0 < len(obj["unique_key"]) <= UNIQUE_KEY_MAX
    ):
        raise FieldError(f"field 'unique_key' must be a string of 1-{UNIQUE_KEY_MAX} characters")
    expect(obj, "history", list, "an array")
    for key in ("retry_on", "no_retry_on"):  # exception type names (see decision.RetryPolicy)
        if key in obj and not (
            isinstance(obj[key], list) and all(isinstance(v, str) and v for v in obj[key])
        ):
            raise FieldError(f"field '{key}' must be an array of exception type names")
    for key in FOLLOW_UP_FIELDS:
        if key in obj:
            validate_follow_ups(obj[key], key)
    if "pass_result" in obj and not isinstance(obj["pass_result"], bool):
        raise FieldError("field 'pass_result' must be true or false")
    if ("batch" in obj) != ("batch_index" in obj):
        raise FieldError("fields 'batch' and 'batch_index' go together")
    if "batch" in obj and not (isinstance(obj["batch"], str) and is_valid_id(obj["batch"])):
        raise FieldError("field 'batch' must match [A-Za-z0-9._-]{1,128}")
    if "batch_index" in obj and not (is_int(obj["batch_index"]) and obj["batch_index"] >= 0):
        raise FieldError("field 'batch_index' must be an integer >= 0")
    if "rate" in obj:
        parse_rate(obj["rate"], "rate")
    if "concurrency" in obj and not (is_int(obj["concurrency"]) and obj["concurrency"] >= 1):
        raise FieldError("field 'concurrency' must be an integer >= 1")
    for field in ("concurrency_key", "rate_key"):
        key = obj.get(field, "-")
        if not (isinstance(key, str) and ID_RE.fullmatch(key)):
            raise FieldError(f"field '{field}' must match [A-Za-z0-9._-]{{1,128}}")


FOLLOW_UP_FIELDS = ("then", "then_on_failure")


def validate_follow_ups(value: JSON, key: str) -> None:
    """Check a `then` list: task objects without an id (a follow-up's id is derived from its
    parent's, see workflows.followup) or a unique_key. Raises: FieldError naming the entry."""
    if not isinstance(value, list):
        raise FieldError(f"field '{key}' must be an array of task objects, not {json_kind(value)}")
    for number, item in enumerate(value, 1):
        where = f"{key}[{number}]"
        if not isinstance(item, dict):
            raise FieldError(f"{where} must be a task object, not {json_kind(item)}")
        for taken in ("id", "unique_key"):
            if taken in item:
                raise FieldError(f"{where}: a follow-up has no '{taken}' (its id is derived)")
        queue = item.get("queue", "default")
        if not (isinstance(queue, str) and QUEUE_RE.fullmatch(queue)):
            raise FieldError(f"{where}: field 'queue' must match [A-Za-z0-9_-]{{1,64}}")
        try:
            validate_fields(item)
        except FieldError as exc:
            raise FieldError(f"{where}: {exc}") from None


def expect(obj: TaskDict, key: str, kind: type, name: str) -> None:
    if key in obj and not isinstance(obj[key], kind):
        raise FieldError(f"field '{key}' must be {name}, not {json_kind(obj[key])}")


def is_int(value: JSON) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: JSON) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


RATE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|m|h|d)\s*")
RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Rate:
    """At most `count` starts per `per_seconds`, spaced evenly (see workflows.rates)."""

    count: float
    per_seconds: float

    @property
    def interval(self) -> float:
        """Seconds between two starts."""
        return self.per_seconds / self.count

    def __str__(self) -> str:
        return f"{self.count:g}/{self.per_seconds:g}s"


def parse_rate(value: JSON, field: str = "rate") -> Rate:
    """A rate from "10/s", "100/m", "5/h", "1/d" or "3/10s". Raises: FieldError."""
    match = RATE_RE.fullmatch(value) if isinstance(value, str) else None
    if match is not None:
        count = float(match.group(1))
        per = float(match.group(2) or 1) * RATE_UNITS[match.group(3)]
        if count > 0 and per > 0:
            return Rate(count, per)
    raise FieldError(
        f'field \'{field}\' must be a rate such as "10/s", "100/m", "5/h", not {value!r}'
    )


def parse_instant(value: JSON, field: str = "time") -> float:
    """Epoch seconds from a number or ISO-8601 text (naive = local time). Raises: FieldError."""
    if is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip()).timestamp()
        except ValueError:
            pass
    raise FieldError(f"field '{field}' must be epoch seconds or an ISO-8601 time, not {value!r}")


def due_at(task: TaskDict) -> float:
    """When the task may first run: not_before, else enqueued_at + delay, else 0 (at once)."""
    if "not_before" in task:
        return parse_instant(task["not_before"], "not_before")
    if "delay" in task:
        return float(task.get("enqueued_at", 0.0)) + float(task["delay"])
    return 0.0


def priority_of(task: TaskDict) -> int:
    return int(task.get("priority", 0))


def dump(task: TaskDict) -> bytes:
    """Serialise a task file. Raises: InvalidTask when a value is not JSON."""
    try:
        return json.dumps(task, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidTask(f"task {task.get('task')!r} is not JSON-serialisable: {exc}") from exc


def dump_pretty(task: TaskDict) -> str:
    return json.dumps(task, ensure_ascii=False, indent=2, sort_keys=False)


def attempt_seconds(task: Mapping[str, Any]) -> float | None:
    """How long the task's last attempt ran (finished_at - started_at), when both are
    recorded (a history entry has the same two fields)."""
    started, finished = task.get("started_at"), task.get("finished_at")
    if isinstance(started, int | float) and isinstance(finished, int | float):
        return max(0.0, finished - started)
    return None
