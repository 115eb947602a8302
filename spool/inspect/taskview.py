"""One task for a person at a terminal (`spool show ID`; `--json` gives the file itself): its
fields, then each attempt with its error, decision and traceback, then the result."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from spool.context import SPOOL_FIELDS
from spool.inspect.beside import describe_progress

LABEL_WIDTH = 10


def render_task(shown: Mapping[str, Any], now: float, kept_logs: list[int]) -> str:
    """The human layout of a task as `Spool.show` returns it; `kept_logs`: the attempts whose
    output is kept (see spool.inspect.beside)."""
    lines = fields(shown, now)
    history = [entry for entry in shown.get("history") or [] if isinstance(entry, dict)]
    task_id = str(shown.get("id"))
    for entry in history:
        lines += ["", *attempt_lines(task_id, entry, kept_logs)]
    if shown.get("state") == "done":
        attempt = shown.get("attempts", len(history) + 1)
        took = span(shown.get("started_at"), shown.get("finished_at"))
        head = f"attempt {attempt}  worker {shown.get('worker')}  {took}  done"
        lines += ["", head, *output_line(task_id, attempt, kept_logs)]
        lines += [
            "",
            "result",
            indent(json.dumps(shown.get("result"), indent=2, ensure_ascii=False)),
        ]
    elif shown.get("rejected"):
        lines += ["", "rejected", indent(str(shown["rejected"].get("reason", "")))]
    return "\n".join(lines)


def fields(shown: Mapping[str, Any], now: float) -> list[str]:
    state = shown.get("state", "?")
    if shown.get("cancelled_at") is not None:
        state = f"{state} (cancelled)"
    rows: list[tuple[str, object]] = [
        ("id", shown.get("id")),
        ("task", shown.get("task")),
        ("queue", shown.get("queue")),
        ("state", state),
        ("enqueued", when(shown.get("enqueued_at"), now)),
    ]
    if shown.get("retry_at") is not None and state == "delayed":
        rows.append(("retry at", when(shown["retry_at"], now)))
    attempts = f"{shown.get('attempts', 0)}"
    for key in ("lost", "released"):
        if shown.get(key):
            attempts += f" ({shown[key]} {key})"
    rows.append(("attempts", attempts))
    if shown.get("progress"):
        rows.append(("progress", describe_progress(shown["progress"])))
    rows.append(("args", json.dumps(shown.get("args", []), ensure_ascii=False)))
    if shown.get("kwargs"):
        rows.append(("kwargs", json.dumps(shown["kwargs"], ensure_ascii=False)))
    rows += workflow_rows(shown.get("workflow") or {})
    shown_apart = SPOOL_FIELDS | {"state", "rejected", "workflow"}
    extra = {k: v for k, v in shown.items() if k not in shown_apart}
    if extra:
        rows.append(("extra", json.dumps(extra, ensure_ascii=False)))
    if shown.get("unreadable"):
        rows.append(("unreadable", shown["unreadable"]))
    return [f"{label:<{LABEL_WIDTH}}{value}" for label, value in rows if value is not None]


def workflow_rows(links: Mapping[str, Any]) -> list[tuple[str, object]]:
    """The task's place in a workflow (see spool.inspect.workflow): parent, follow-ups, batch."""

    def linked(link: Mapping[str, Any]) -> str:
        return f"{link.get('id')} ({link.get('state') or 'not enqueued'})"

    rows: list[tuple[str, object]] = []
    if isinstance(links.get("parent"), dict):
        rows.append(("parent", linked(links["parent"])))
    for key, label in (("then", "then"), ("then_on_failure", "on failure")):
        if isinstance(links.get(key), list):
            rows.append((label, ", ".join(linked(link) for link in links[key])))
    for key, label in (("batch", "batch"), ("batch_callback", "callback of")):
        batch = links.get(key)
        if isinstance(batch, dict):
            ended = int(batch.get("done") or 0) + int(batch.get("failed") or 0)
            rows.append((label, f"{batch.get('id')} ({ended} of {batch.get('total')} ended)"))
    return rows


def attempt_lines(task_id: str, entry: Mapping[str, Any], kept_logs: list[int]) -> list[str]:
    attempt = entry.get("attempt", "?")
    took = span(entry.get("started_at"), entry.get("finished_at"))
    lines = [f"attempt {attempt}  worker {entry.get('worker')}  {took}"]
    if entry.get("lost"):
        lines[0] += "  lost"
    error = entry.get("error") or {}
    if isinstance(error, dict):
        lines.append(indent(f"{error.get('type')}: {error.get('message')}"))
    decision = entry.get("decision")
    if isinstance(decision, dict):
        after = decision.get("after")
        action = str(decision.get("action"))
        if isinstance(after, int | float):
            action += f" in {after:.0f} s" if after >= 10 else f" in {after:.3g} s"
        lines.append(indent(f"-> {action}: {decision.get('reason')}"))
    tb = error.get("traceback") if isinstance(error, dict) else None
    if tb:
        lines.append(indent(str(tb).rstrip("\n"), 4))
    return lines + output_line(task_id, attempt, kept_logs)


def output_line(task_id: str, attempt: object, kept_logs: list[int]) -> list[str]:
    if attempt not in kept_logs:
        return []
    return [indent(f"output: spool logs {task_id} --attempt {attempt}")]


def when(instant: object, now: float) -> str | None:
    if not isinstance(instant, int | float):
        return None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(instant))
    ago = now - instant
    relative = f"{ago:.1f} s ago" if ago >= 0 else f"in {-ago:.1f} s"
    return f"{stamp} ({relative})"


def span(started: object, finished: object) -> str:
    if not isinstance(started, int | float):
        return ""
    stamp = time.strftime("%H:%M:%S", time.localtime(started))
    if not isinstance(finished, int | float):
        return f"{stamp} (running)"
    return f"{stamp} ({finished - started:.3f} s)"


def indent(text: str, by: int = 2) -> str:
    return "\n".join(" " * by + line for line in text.splitlines())
