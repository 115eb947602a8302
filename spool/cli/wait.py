"""`spool wait`: block until tasks finish, print their results (one watch for many ids; each
task's progress on stderr with --progress); exit 0 all done, 1 one failed, 3 timed out."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from spool.app import Spool, outcome_of
from spool.cli.common import Duration, settings_of, user_errors
from spool.errors import SpoolError, TaskFailed, TaskNotFound
from spool.inspect.beside import describe_progress

PROGRESS_LOOK_SECONDS = 0.25  # (wait --progress)


@click.command()
@click.argument("task_ids", nargs=-1, required=True, metavar="ID...")
@click.option(
    "--timeout",
    type=Duration(),
    metavar="DURATION",
    help="Give up after this long (exit 3); 90s, 5m, 1h or seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="A failed task's error as JSON on stdout.")
@click.option("--progress", is_flag=True, help="Show each task's progress on stderr meanwhile.")
@click.pass_context
def wait(
    ctx: click.Context,
    task_ids: tuple[str, ...],
    timeout: float | None,
    as_json: bool,
    progress: bool,
) -> None:
    """Wait for tasks to finish; print each result as JSON. Exit 0 all done, 1 one failed (or is
    unknown), 3 timed out. A failed task's error and traceback go to stderr as text (--json: its
    error object on stdout too). With several IDs, one line each, in the order given: {"id",
    "state", "result" or "error"}."""
    app = Spool(settings=settings_of(ctx))
    lines: dict[str, dict[str, Any]] = {}
    shown = 0
    waiting = progress_outcomes if progress else Spool.wait_many  # (generators: nothing runs yet)
    with user_errors():
        for task_id, info in waiting(app, task_ids, timeout):
            lines[task_id] = wait_line(task_id, info)
            while shown < len(task_ids) and task_ids[shown] in lines:  # in the order given
                show_wait_line(lines[task_ids[shown]], len(task_ids) > 1, as_json)
                shown += 1
    states = {line["state"] for line in lines.values()}
    ctx.exit(3 if "waiting" in states else 1 if states & {"failed", "unknown"} else 0)


def wait_line(task_id: str, info: dict[str, Any] | None) -> dict[str, Any]:
    """What `spool wait` says of one task, its error printed on stderr."""
    if info is None:
        click.echo(f"Error: {TaskNotFound(task_id)}", err=True)
        return {"id": task_id, "state": "unknown"}
    if info["state"] == "waiting":
        click.echo(f"Error: task {task_id} did not finish in time", err=True)
        return {"id": task_id, "state": "waiting"}
    try:
        return {"id": task_id, "state": "done", "result": outcome_of(task_id, info)}
    except TaskFailed as exc:
        click.echo(failure_text(exc), err=True)
        return {"id": task_id, "state": "failed", "error": exc.error}


def show_wait_line(line: dict[str, Any], several: bool, as_json: bool) -> None:
    if several:
        click.echo(json.dumps(line, ensure_ascii=False))
    elif "result" in line:
        click.echo(json.dumps(line["result"], ensure_ascii=False))
    elif "error" in line and as_json:
        click.echo(json.dumps(line["error"], indent=2, ensure_ascii=False))


def progress_outcomes(
    app: Spool, task_ids: tuple[str, ...], timeout: float | None
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """As Spool.wait_many, one task after the other, each one's progress shown meanwhile."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for task_id in dict.fromkeys(task_ids):
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        yield task_id, wait_showing_progress(app, task_id, left)


def wait_showing_progress(app: Spool, task_id: str, timeout: float | None) -> dict[str, Any] | None:
    """Spool.wait_many for one task in short steps, its progress (see spool.progress) shown on
    stderr between them: a click progress bar once a total is known, else a line."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = ProgressShown(task_id)
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = PROGRESS_LOOK_SECONDS if left is None else min(left, PROGRESS_LOOK_SECONDS)
            ((_, info),) = app.wait_many([task_id], step)
            if info is None or info["state"] != "waiting" or (left is not None and left <= step):
                return info
            with contextlib.suppress(SpoolError):  # (it may have finished or moved meanwhile)
                shown.update(app.show(task_id).get("progress"))
    finally:
        shown.close()


class ProgressShown:
    """One task's progress on stderr: a click progress bar once a total is known, else a line
    each time it changes."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.bar: Any = None
        self.said = ""

    def update(self, value: Any) -> None:
        if not isinstance(value, dict):
            return
        done, total = value.get("done"), value.get("total")
        if self.bar is None and isinstance(total, int | float) and total > 0:
            self.bar = click.progressbar(length=int(total), label=self.task_id, file=sys.stderr)
            self.bar.__enter__()
        if self.bar is not None and isinstance(done, int | float):
            self.bar.label = f"{self.task_id} {value.get('message') or ''}".rstrip()
            self.bar.update(int(done) - self.bar.pos)
        elif self.bar is None and (said := describe_progress(value)) != self.said:
            self.said = said
            click.echo(f"{self.task_id}: {said}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def failure_text(failed: TaskFailed) -> str:
    """A failed task for a terminal: the one-line error, then its traceback as it was."""
    tb = failed.error.get("traceback")
    text = f"Error: {failed}"
    return f"{text}\n{str(tb).rstrip()}" if isinstance(tb, str) and tb.strip() else text
