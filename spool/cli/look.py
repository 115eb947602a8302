"""Commands that look at the spool and change nothing: `status`, `ls`, `show`, `logs`, `batch`,
`top`, `metrics`."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from spool.app import Spool
from spool.cli.common import (
    duration_option,
    format_age,
    queue_option,
    queues_of,
    render_table,
    settings_of,
    user_errors,
)
from spool.workflows.batches import Summary


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per queue: incoming, delayed, processing, done, failed, cancelled; oldest waiting age;
    live workers."""
    from spool.inspect.status import spool_status

    settings = settings_of(ctx)
    with user_errors():
        data = spool_status(settings.root)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(render_status(data))


def render_status(data: dict[str, Any]) -> str:
    columns = ["incoming", "delayed", "processing", "done", "failed"]
    rows = [["queue", *columns, "cancelled", "oldest waiting"]]
    for name, counts in data["queues"].items():
        age = counts["oldest_waiting_seconds"]
        failed = f"{counts['failed']}" + (
            f" ({counts['rejected']} rejected)" if counts["rejected"] else ""
        )
        rows.append(
            [
                name + (" (paused)" if counts.get("paused") else ""),
                *[str(counts[c]) for c in columns[:-1]],
                failed,
                str(counts.get("cancelled", 0)),
                "-" if age is None else format_age(age),
            ]
        )
    lines = render_table(rows, right=frozenset(range(1, 8)))
    if len(rows) == 1:
        lines.append("(no queues yet)")
    lines += paused_lines(data["queues"])
    workers = data["workers"]
    lines.append(f"workers: {len(workers)} alive")
    if workers:
        table = [["  worker", "pid", "host", "queues"]]
        for w in workers:
            host = str(w.get("host", "?"))
            table.append([f"  {w['id']}", str(w.get("pid")), host, queues_of(w) + waiting_note(w)])
        lines += render_table(table)
    lines.insert(0, f"root: {data['root']}")
    return "\n".join(lines)


def paused_lines(queues: dict[str, Any]) -> list[str]:
    """One line per paused queue: since when, and the reason given to `spool pause`."""
    lines = []
    for name, counts in queues.items():
        pause = counts.get("pause")
        if counts.get("paused") and isinstance(pause, dict):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pause.get("paused_at", 0)))
            reason = pause.get("reason") or "no reason given"
            lines.append(f"paused: {name} since {since} ({time.strftime('%Z')}): {reason}")
    return lines


def waiting_note(worker: dict[str, Any]) -> str:
    if not worker.get("outcomes_waiting"):
        return ""
    return f" OUTCOMES WAITING for the disk ({worker['outcomes_waiting_seconds']:.0f}s; no claims)"


@click.command("ls")
@click.argument("state", type=click.Choice(["incoming", "delayed", "processing", "done", "failed"]))
@click.option("--queue", "-q", metavar="Q", help="Only this queue.")
@click.option("--task", "task_name", metavar="NAME", help="Only tasks of this name.")
@click.option("--since", metavar="DURATION", help="Only entries at most this old (e.g. 1h).")
@click.option("--older-than", metavar="DURATION", help="Only entries at least this old (e.g. 7d).")
@click.option(
    "--limit", type=click.IntRange(min=0), default=100, show_default=True, help="0 = all."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (a JSON array).")
@click.pass_context
def ls_command(
    ctx: click.Context,
    state: str,
    queue: str | None,
    task_name: str | None,
    since: str | None,
    older_than: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List the tasks of STATE: id, task, priority, age, attempts (and the error for failed)."""
    from spool.inspect.listing import Filters, list_tasks

    settings = settings_of(ctx)
    filters = Filters(
        queue=queue_option(queue),
        task=task_name,
        since_seconds=duration_option(since, "--since"),
        older_than_seconds=duration_option(older_than, "--older-than"),
        limit=limit or None,
    )
    with user_errors():
        rows = list_tasks(settings.root, state, filters)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo(f"no tasks in {state}", err=True)
        return
    for line in render_table(listing_rows(state, rows), right=frozenset({3, 4, 5})):
        click.echo(line)


def listing_rows(state: str, rows: list[dict[str, Any]]) -> list[list[str]]:
    """The table of `spool ls`: a header, then one row per task."""
    from spool.inspect.beside import describe_progress

    extra = {"delayed": ["due in"], "processing": ["progress"], "failed": ["error"]}.get(state, [])
    table = [["id", "task", "queue", "priority", "attempts", "age", *extra]]
    now = time.time()
    for item in rows:
        cells = [str(item["id"]), str(item["task"]), str(item["queue"])]
        cells += [str(item["priority"]), str(item["attempts"]), format_age(item["age_seconds"])]
        if state == "delayed":
            due = item.get("due_at")
            cells.append("-" if due is None else format_age(max(0.0, due - now)))
        if state == "failed":
            error = f"{item.get('error_type')}: {item.get('error_message')}"
            cells.append(error + ("  (cancelled, not failed)" if item.get("cancelled") else ""))
        if state == "processing":
            cells.append(describe_progress(item["progress"]) if item.get("progress") else "-")
        table.append(cells)
    return table


@click.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and logs).")
@click.pass_context
def top(ctx: click.Context, interval: float, once: bool) -> None:
    """A live view: depth per queue and state, throughput per minute, recent failures."""
    from spool.inspect.top import run

    settings = settings_of(ctx)
    in_place = sys.stdout.isatty() and not once

    def show(frame: str) -> None:
        if in_place:
            click.clear()
        click.echo(frame)

    with user_errors(), contextlib.suppress(KeyboardInterrupt):
        run(settings.root, interval, show, frames=1 if once else None)


@click.command()
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="Write to PATH atomically (node_exporter textfile collector) instead of printing.",
)
@click.pass_context
def metrics(ctx: click.Context, textfile: str | None) -> None:
    """Queue depths, oldest waiting age, done/failed counters, durations: Prometheus text."""
    from spool.inspect.metrics import render, write_textfile

    settings = settings_of(ctx)
    with user_errors():
        if textfile is None:
            click.echo(render(settings.root), nl=False)
        else:
            try:
                write_textfile(settings.root, Path(textfile))
            except OSError as exc:
                raise click.ClickException(f"cannot write {textfile}: {exc.strerror}") from exc


@click.command()
@click.argument("task_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The task's file as one line of JSON.")
@click.pass_context
def show(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show one task (any queue, any state): its fields, each attempt with its error, decision
    and traceback, then the result; --json gives the file with its queue, state and progress."""
    app = Spool(settings=settings_of(ctx))
    with user_errors():
        shown = app.show(task_id)
    if as_json:
        click.echo(json.dumps(shown, ensure_ascii=False))
        return
    click.echo(render_show(app.root, shown))


def render_show(root: Path, shown: dict[str, Any]) -> str:
    """`spool show`'s human layout (see spool.inspect.taskview)."""
    import time

    from spool.inspect.beside import attempt_logs
    from spool.inspect.taskview import render_task
    from spool.layout import QueueDirs

    kept = attempt_logs(QueueDirs(root, shown["queue"]), str(shown.get("id")))
    return render_task(shown, time.time(), kept)


@click.command()
@click.argument("task_id", metavar="ID")
@click.option("--attempt", type=click.IntRange(min=1), metavar="N", help="This attempt's output.")
@click.option("--follow", "-f", is_flag=True, help="Follow a running attempt until it ends.")
@click.pass_context
def logs(ctx: click.Context, task_id: str, attempt: int | None, follow: bool) -> None:
    """Print what a task's handler wrote (stdout, stderr, logging) during its last attempt, or
    attempt N; with -f, follow the running attempt until it ends."""
    from spool.inspect.beside import current_output, output_of
    from spool.inspect.beside import follow as follow_output

    settings = settings_of(ctx)

    def write(data: bytes) -> None:
        out = sys.stdout.buffer
        out.write(data)
        out.flush()

    with user_errors():
        where = output_of(settings.root, task_id, attempt)
        if follow:
            with contextlib.suppress(KeyboardInterrupt):
                follow_output(settings.root, where, write)
        else:
            write(current_output(where))


@click.command("batch")
@click.argument("batch_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def batch_command(ctx: click.Context, batch_id: str, as_json: bool) -> None:
    """Show a batch's progress: total, done, failed, pending, and its callbacks' ids."""
    app = Spool(settings=settings_of(ctx))
    with user_errors():
        summary = app.batch_status(batch_id)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
        return
    click.echo(render_batch(summary, bar=sys.stdout.isatty()))


def render_batch(summary: Summary, bar: bool) -> str:
    ended = summary.done + summary.failed
    share = ended / summary.total if summary.total else 1.0
    lines = [
        f"batch {summary.id}: {ended} of {summary.total} ended ({share:.0%})",
        f"  done {summary.done}  failed {summary.failed}  pending {summary.pending}",
    ]
    if bar:
        width = 40
        filled = round(share * width)
        lines.insert(1, "  [" + "#" * filled + "." * (width - filled) + "]")
    for key, ids in summary.callbacks.items():
        if ids:
            lines.append(f"  {key}: {' '.join(ids)}")
    return "\n".join(lines)
