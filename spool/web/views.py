"""What the dashboard's templates show, worked out from the data: instants (in UTC on the
server; the page switches them to the browser's zone), durations, readable JSON, the
throughput chart (one scale for every queue, with its axes), a task's attempts and a rejected
file's bytes. Pure functions of their arguments (`now` passed in), so the pages stay
templates."""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup

from spool.envelope import attempt_seconds
from spool.errors import SpoolError
from spool.inspect.beside import current_output, describe_progress, output_of, progress_of
from spool.layout import QueueDirs
from spool.lookup import Found
from spool.stats import DURATION_BUCKETS
from spool.tables import split_span

CHART_WIDTH, CHART_HEIGHT = 300, 64
CHART_LEFT, CHART_BOTTOM = 40, 14  # room for the numbers of the y axis and the x axis
RAW_LIMIT = 64 * 1024  # bytes of a rejected file shown
UNIT_WORDS = {"d": "d", "h": "h", "m": "min", "s": "s"}  # (split_span's units, as shown)


def instant(value: Any) -> Markup:
    """An epoch time as <time data-at=...>2026-12-02 21:25:04 UTC</time> (24-hour), which the
    page shows in the browser's zone when asked to; "-" for anything else."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return Markup("-")
    text = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
    return Markup('<time datetime="{}" data-at="{}">{}</time>').format(stamp, f"{value:.3f}", text)


def duration(seconds: Any) -> str:
    """A time span for people: 4 ms, 1.25 s, 3 min 05 s, 2 h 10 min."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    big, unit, small, small_unit = split_span(seconds)
    return f"{big} {UNIT_WORDS[unit]} {small:02d} {UNIT_WORDS[small_unit]}"


def pretty(value: Any) -> str:
    """JSON as a person reads it: indented, non-ASCII and quotes as they are (the template
    escapes it for HTML)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


# ---- the throughput chart -----------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    title: str  # what a pointer over it says
    kind: str = "count"  # count, p95, p50 (a CSS class)


@dataclass(frozen=True)
class Chart:
    """One queue's bars per minute over the last hour on the scale every queue shares."""

    bars: list[Bar]
    top_label: str  # the value of the top of the y axis
    summary: str
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    left: int = CHART_LEFT
    bottom: int = CHART_BOTTOM

    @property
    def base(self) -> int:
        return self.height - self.bottom


def nice_top(peak: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above `peak` (at least 1)."""
    if peak <= 1:
        return 1
    magnitude = int(10 ** math.floor(math.log10(peak)))
    return next(step * magnitude for step in (1, 2, 5, 10) if step * magnitude >= peak)


def shared_top(series: list[list[int]]) -> int:
    return nice_top(max((max(s, default=0) for s in series), default=0))


def bar_geometry(i: int, count: int, value: float, top: float) -> tuple[float, float, float]:
    """(x, y, height) of the value in minute `i` of `count`, scaled to `top`."""
    step = (CHART_WIDTH - CHART_LEFT) / max(count, 1)
    height = max(1.0, (CHART_HEIGHT - CHART_BOTTOM - 2) * min(value, top) / top)
    return CHART_LEFT + i * step, CHART_HEIGHT - CHART_BOTTOM - height, height


def chart(series: list[int], top: int) -> Chart:
    """Tasks finished per minute (one a minute, the oldest first) scaled to `top`."""
    bars = []
    for i, count in enumerate(series):
        if count:
            x, y, height = bar_geometry(i, len(series), count, top)
            bars.append(Bar(x, y, height, f"{len(series) - 1 - i} min ago: {count} finished"))
    total, peak = sum(series), max(series, default=0)
    summary = f"{total} finished in the last hour, at most {peak} a minute"
    return Chart(bars, f"{top}/min", summary)


def runtime_top(series: list[list[tuple[float, float] | None]]) -> float:
    """The smallest duration bucket bound at or above every queue's p95 (one scale)."""
    peak = max((p[1] for s in series for p in s if p is not None), default=0.0)
    return next((b for b in DURATION_BUCKETS if b >= peak), DURATION_BUCKETS[-1])


def runtime_chart(series: list[tuple[float, float] | None], top: float) -> Chart:
    """The p95 (light) and p50 (dark) of each minute's attempts, scaled to `top` seconds."""
    bars = []
    for i, point in enumerate(series):
        if point is None:
            continue
        ago = len(series) - 1 - i
        title = f"{ago} min ago: p50 {duration(point[0])}, p95 {duration(point[1])}"
        for kind, value in (("p95", point[1]), ("p50", point[0])):
            x, y, height = bar_geometry(i, len(series), value, top)
            bars.append(Bar(x, y, height, title, kind))
    known = [p for p in series if p is not None]
    summary = (
        f"last minute with tasks: p50 {duration(known[-1][0])}, p95 {duration(known[-1][1])}"
        if known
        else "no attempts finished since the dashboard started"
    )
    return Chart(bars, duration(top), summary)


# ---- a task ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One failed (or lost) attempt of a task's history, as the task page lists it: `run`
    counts every run of the task, `number` is the attempt as recorded (it starts again at 1
    after `spool retry`, which `after_retry` marks)."""

    run: int
    number: int | None
    error_type: str
    message: str
    traceback: str
    at: float | None
    took: float | None
    worker: str | None
    lost: bool
    after_retry: bool


def attempts_of(task: dict[str, Any]) -> list[Attempt]:
    """The task's history, oldest first."""
    rows: list[Attempt] = []
    for entry in task.get("history") or []:
        if not isinstance(entry, dict):
            continue
        nested = entry.get("error")
        error: dict[str, Any] = nested if isinstance(nested, dict) else entry
        number = entry.get("attempt") if isinstance(entry.get("attempt"), int) else None
        at = entry.get("finished_at") or entry.get("at")
        before = rows[-1].number if rows else None
        rows.append(
            Attempt(
                run=len(rows) + 1,
                number=number,
                error_type=str(error.get("type") or "?"),
                message=str(error.get("message") or ""),
                traceback=str(error.get("traceback") or ""),
                at=at if isinstance(at, int | float) else None,
                took=attempt_seconds(entry),
                worker=str(entry["worker"]) if entry.get("worker") else None,
                lost=bool(entry.get("lost")),
                after_retry=number is not None and before is not None and number <= before,
            )
        )
    return rows


def final_error_is_last_attempt(task: dict[str, Any], attempts: list[Attempt]) -> bool:
    """Whether the task's error is the last history entry's (then it is shown once)."""
    error = task.get("error")
    if not isinstance(error, dict) or not attempts:
        return False
    last = attempts[-1]
    return (error.get("type"), error.get("message")) == (last.error_type, last.message)


@dataclass(frozen=True)
class RawFile:
    """The bytes of a rejected file, as text when they decode, else escaped."""

    size: int
    text: str
    shown: int
    is_utf8: bool


def raw_file(path: Path) -> RawFile | None:
    """What a rejected file holds (None when it is no regular file or is gone: a symlink is
    never followed, a FIFO never waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        data = f.read(RAW_LIMIT)
    try:
        text, is_utf8 = data.decode("utf-8"), True
    except UnicodeDecodeError:
        text, is_utf8 = data.decode("utf-8", errors="backslashreplace"), False
    return RawFile(size=st.st_size, text=text, shown=len(data), is_utf8=is_utf8)


def progress_text(progress: Any) -> str:
    """A running task's progress as a queue page's cell ("-" when it reported none)."""
    return describe_progress(progress) if progress else "-"


OUTPUT_SHOWN_BYTES = 16 * 1024  # of the last attempt's output, on the task page


def beside_view(root: Path, found: Found, task: dict[str, Any]) -> dict[str, Any]:
    """The task page's progress and output sections (see spool.inspect.beside)."""
    view: dict[str, Any] = {"progress": task.get("progress"), "output": None}
    if found.state == "processing":
        view["progress"] = progress_of(QueueDirs(root, found.queue), task)
    with contextlib.suppress(SpoolError, OSError):
        where = output_of(root, str(task.get("id", found.path.stem)))
        text = current_output(where)[-OUTPUT_SHOWN_BYTES:].decode("utf-8", "replace")
        view["output"] = {"attempt": where.attempt, "text": text, "running": bool(where.scratch)}
    view["progress_text"] = describe_progress(view["progress"])
    return view
