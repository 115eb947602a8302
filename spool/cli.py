"""The `spool` command line: thin click commands over the app, producer, worker and status.

Errors a user can cause are one line on stderr: exit 2 for usage and configuration errors,
1 for an operation that failed (or a failed task), 3 for a timeout.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click

from spool import __version__, producer
from spool.app import Spool
from spool.config import Settings, load_settings, parse_duration
from spool.envelope import FieldError, parse_instant
from spool.errors import (
    ConfigError,
    InvalidQueueName,
    InvalidTask,
    SpoolError,
    TaskFailed,
    TaskNotFound,
    WaitTimeout,
)
from spool.layout import check_queue_name, check_root, queue_dirs
from spool.manifest import Catalog

BATCH = 10_000


class TimeoutExit(click.ClickException):
    exit_code = 3


class UsageProblem(click.ClickException):
    """A usage or configuration error: one line on stderr, exit 2."""

    exit_code = 2


def bad(hint: str, message: str) -> UsageProblem:
    """The error for a bad value of option or argument `hint`."""
    return UsageProblem(f"{hint}: {message}")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn spool's errors into one line on stderr with the right exit code."""
    try:
        yield
    except (ConfigError, InvalidQueueName, InvalidTask) as exc:
        raise UsageProblem(str(exc)) from exc
    except TaskNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    except WaitTimeout as exc:
        raise TimeoutExit(str(exc)) from exc
    except SpoolError as exc:
        raise click.ClickException(str(exc)) from exc
    except PermissionError as exc:
        raise click.ClickException(f"permission denied: {exc.filename}") from exc
    except OSError as exc:  # e.g. a file where a queue's directory must be
        raise click.ClickException(f"{(exc.strerror or str(exc)).lower()}: {exc.filename}") from exc


def settings_of(ctx: click.Context) -> Settings:
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        with user_errors():
            loaded = load_settings(obj.get("root"), obj.get("config"))
            check_root(loaded.root)  # a root that is a file, or unreadable: one line here
        obj["settings"] = loaded
    settings: Settings = obj["settings"]
    return settings


def queue_option(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_queue_name(value)
    except InvalidQueueName as exc:
        raise bad("--queue", str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    envvar=None,
    metavar="DIR",
    help="Spool root (default: SPOOL_ROOT, config, var/spool).",
)
@click.option(
    "--config", metavar="FILE", help="Config file (default: SPOOL_CONFIG, conf/spool.toml)."
)
@click.version_option(__version__, prog_name="spool")
@click.pass_context
def cli(ctx: click.Context, root: str | None, config: str | None) -> None:
    """spool: background tasks in a directory tree, run by resident workers."""
    ctx.ensure_object(dict).update(root=root, config=config)


def parse_arg(text: str) -> Any:
    """An ARG as JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@cli.command()
@click.argument("task", required=False)
@click.argument("args", nargs=-1)
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments as a JSON object.")
@click.option(
    "--queue",
    "-q",
    metavar="Q",
    help="Queue (default: the queue the task's handler declares, else default).",
)
@click.option(
    "--no-check",
    is_flag=True,
    help="Enqueue even if no worker knows TASK or the arguments do not fit its handler "
    "(a task about to be deployed).",
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    metavar="S",
    help="Run no earlier than S seconds from now.",
)
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="Run no earlier than TIME (ISO-8601; naive = local) or epoch seconds.",
)
@click.option("--priority", type=click.IntRange(0, 9), help="0-9, higher runs first (default 0).")
@click.option("--max-retries", type=click.IntRange(min=0), help="Retries after the first attempt.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Seconds one attempt may run.",
)
@click.option(
    "--unique", "unique_key", metavar="KEY", help="Skip if a task with KEY is pending or running."
)
@click.option("--id", "task_id", metavar="ID", help="Task id (default: a new time-sortable id).")
@click.option(
    "--from",
    "from_file",
    type=click.File("r", encoding="utf-8"),
    metavar="FILE.jsonl",
    help="Enqueue one task per line (a task object per line; - for stdin).",
)
@click.pass_context
def enqueue(
    ctx: click.Context,
    task: str | None,
    args: tuple[str, ...],
    kwargs_json: str | None,
    queue: str | None,
    delay: float | None,
    at: str | None,
    priority: int | None,
    max_retries: int | None,
    timeout: float | None,
    unique_key: str | None,
    task_id: str | None,
    from_file: IO[str] | None,
    no_check: bool,
) -> None:
    """Enqueue TASK with ARGs (each parsed as JSON when it parses); print its id.

    The tasks the workers serve are published under the root (see `spool tasks`): TASK goes
    to the queue its handler declares, and an unknown TASK or ARGs that do not fit its
    handler are refused (exit 2) unless --no-check.

    Put -- before ARGs that start with a dash: spool enqueue add -- -1 2
    """
    settings = settings_of(ctx)
    queue = queue_option(queue)
    with user_errors():
        catalog = Catalog.load(settings.root)
    if from_file is not None:
        if task is not None:
            raise UsageProblem("give either TASK or --from, not both")
        enqueue_from(settings, from_file, queue, catalog, check=not no_check)
        warn_unchecked(settings, catalog, check=not no_check)
        return
    if task is None:
        raise UsageProblem("missing TASK (or --from FILE.jsonl)")
    if delay is not None and at is not None:
        raise UsageProblem("give either --delay or --at, not both")
    kwargs: dict[str, Any] = {}
    if kwargs_json is not None:
        try:
            kwargs = json.loads(kwargs_json)
        except ValueError as exc:
            raise bad("--kwargs", f"not valid JSON: {exc}") from None
        if not isinstance(kwargs, dict):
            raise bad("--kwargs", "must be a JSON object")
    not_before = None
    if at is not None:
        try:
            not_before = parse_instant(
                parse_arg(at) if at.strip().replace(".", "", 1).isdigit() else at, "at"
            )
        except FieldError:
            raise bad("--at", f"{at!r} is not ISO-8601 or epoch seconds") from None
    with user_errors():
        built = producer.build_task(
            task,
            [parse_arg(a) for a in args],
            kwargs,
            delay=delay,
            not_before=not_before,
            priority=priority,
            max_retries=max_retries,
            timeout=timeout,
            unique_key=unique_key,
            id=task_id,
        )
        click.echo(producer.enqueue(settings, built, queue, catalog=catalog, check=not no_check))
    warn_unchecked(settings, catalog, check=not no_check)


def warn_unchecked(settings: Settings, catalog: Catalog, check: bool) -> None:
    """Say once, after enqueueing, that there were no published tasks to check against."""
    if check and not catalog.exists:
        click.echo(
            f"spool: no worker has published its tasks under {settings.root} yet: "
            "task names and arguments are not checked, and tasks without --queue go to "
            "their own 'queue' field or 'default'",
            err=True,
        )


def read_jsonl(stream: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise bad("--from", f"line {number}: not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise bad("--from", f"line {number}: must be a JSON object") from None
        yield number, obj


def enqueue_from(
    settings: Settings, stream: IO[str], queue: str | None, catalog: Catalog, check: bool
) -> None:
    """Enqueue a JSON-lines file in durable batches, with a progress bar on a terminal."""
    total = 0
    show_bar = sys.stderr.isatty()
    with click.progressbar(
        length=0, label="enqueued", file=sys.stderr, hidden=not show_bar, show_pos=True
    ) as bar:
        batch: list[tuple[int, dict[str, Any]]] = []

        def flush() -> None:
            nonlocal total
            try:
                tasks = [obj for _, obj in batch]
                ids = producer.enqueue_many(settings, tasks, queue, catalog=catalog, check=check)
            except InvalidTask as exc:  # "task N: reason" -> the line number
                position, _, reason = str(exc).partition(": ")
                line = (
                    batch[int(position.split()[-1]) - 1][0] if position.startswith("task ") else "?"
                )
                raise bad("--from", f"line {line}: {reason or exc}") from None
            except SpoolError as exc:
                raise click.ClickException(str(exc)) from exc
            for task_id in ids:
                click.echo(task_id)
            total += len(ids)
            bar.length = total
            bar.update(len(ids))
            batch.clear()

        for item in read_jsonl(stream):
            batch.append(item)
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
    click.echo(f"enqueued {total} tasks", err=True)


@cli.command()
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    metavar="Q",
    help="Serve Q (repeat; default: every queue).",
)
@click.option("--burst", is_flag=True, help="Run what is due, then exit.")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="Log lines as text (default) or JSON."
)
@click.pass_context
def worker(
    ctx: click.Context, queues: tuple[str, ...], burst: bool, log_format: str | None
) -> None:
    """Run a worker: claim tasks, run their handlers, record the outcome."""
    from spool.logs import setup_logging
    from spool.worker import run_worker

    settings = settings_of(ctx)
    for q in queues:
        queue_option(q)
    setup_logging(log_format or settings.log_format, settings.log_level)
    with user_errors():
        code = run_worker(settings, queues, burst)
    ctx.exit(code)


@cli.command()
@click.pass_context
def reload(ctx: click.Context) -> None:
    """Make the workers on this host load their task modules again (SIGHUP to each).

    Each worker lets its running task finish on the old code, then imports the modules anew in
    a new handler process and logs what changed (tasks added, removed, options changed). If a
    module does not import, the worker logs one ERROR line and keeps serving the old code.
    Workers on other hosts are skipped: run `spool reload` there. Exit 1 if no worker was
    signalled. (A change to the config's `tasks` list needs a restart.)
    """
    from spool.reload import signal_workers

    settings = settings_of(ctx)
    with user_errors():
        report = signal_workers(settings.root)
    elsewhere = len(report.elsewhere)
    skipped = f"; skipped {elsewhere} on other hosts (run spool reload there)" if elsewhere else ""
    if report.signalled:
        click.echo(
            f"signalled {len(report.signalled)} worker(s): each reloads its task code "
            f"after its running task{skipped}"
        )
    if report.denied:
        raise click.ClickException(
            f"cannot signal {', '.join(report.denied)}: permission denied (run as their user)"
        )
    if not report.signalled:
        raise click.ClickException(f"no worker of {settings.root} runs on this host{skipped}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per queue: incoming, delayed, processing, done, failed, cancelled; oldest waiting age;
    live workers."""
    from spool.status import spool_status

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
        if counts.get("paused"):
            name += " (paused)"
        rows.append(
            [
                name,
                *[str(counts[c]) for c in columns[:-1]],
                failed,
                str(counts.get("cancelled", 0)),
                "-" if age is None else f"{age:.1f}s",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if len(rows) == 1:
        lines.append("(no queues yet)")
    workers = data["workers"]
    lines.append(
        f"workers: {len(workers)} alive"
        + "".join(
            f"\n  {w['id']} pid={w.get('pid')} queues={','.join(w.get('queues', []))}"
            + waiting_note(w)
            for w in workers
        )
    )
    lines.insert(0, f"root: {data['root']}")
    return "\n".join(lines)


def waiting_note(worker: dict[str, Any]) -> str:
    if not worker.get("outcomes_waiting"):
        return ""
    return f" OUTCOMES WAITING for the disk ({worker['outcomes_waiting_seconds']:.0f}s; no claims)"


def duration_option(value: str | None, hint: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise bad(hint, str(exc)) from None


@cli.command("ls")
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
    from spool.listing import Filters, list_tasks

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
    for item in rows:
        line = (
            f"{item['id']}  {item['task']}  q={item['queue']}  p={item['priority']}  "
            f"attempts={item['attempts']}  age={item['age_seconds']:.1f}s"
        )
        if state == "failed":
            line += f"  {item.get('error_type')}: {item.get('error_message')}"
            line += "  (cancelled, not failed)" if item.get("cancelled") else ""
        click.echo(line)
    if not rows:
        click.echo(f"no tasks in {state}", err=True)


@cli.command()
@click.argument("task_ids", nargs=-1, metavar="ID...")
@click.option("--all-failed", is_flag=True, help="Retry every failed task (of --queue/--task).")
@click.option("--queue", "-q", metavar="Q", help="With --all-failed: only this queue.")
@click.option("--task", "task_name", metavar="NAME", help="With --all-failed: only this task.")
@click.option("--dry-run", is_flag=True, help="Say what would be retried; change nothing.")
@click.pass_context
def retry(
    ctx: click.Context,
    task_ids: tuple[str, ...],
    all_failed: bool,
    queue: str | None,
    task_name: str | None,
    dry_run: bool,
) -> None:
    """Move failed tasks back to incoming/ with attempts reset (their history is kept)."""
    from spool.manage import failed_ids
    from spool.manage import retry as retry_task

    settings = settings_of(ctx)
    if bool(task_ids) == all_failed:
        raise UsageProblem("give task IDs or --all-failed (not both)")
    if all_failed:
        targets = [
            task_id for _, task_id in failed_ids(settings.root, queue_option(queue), task_name)
        ]
    else:
        targets = list(task_ids)
    if dry_run:
        for task_id in targets:
            click.echo(f"would retry {task_id}")
        click.echo(f"would retry {len(targets)} task(s)", err=True)
        return
    failures = apply_each(targets, lambda task_id: retry_task(settings.root, task_id), "retried")
    if len(targets) > failures or not targets:  # (when none was retried, the errors say it all)
        click.echo(f"retried {len(targets) - failures} task(s)", err=True)
    ctx.exit(1 if failures else 0)


def apply_each(task_ids: Iterable[str], action: Callable[[str], object], done: str) -> int:
    """Apply `action` to each id, one line per id; return how many failed."""
    failures = 0
    for task_id in task_ids:
        try:
            action(task_id)
            click.echo(f"{done} {task_id}")
        except SpoolError as exc:
            click.echo(f"Error: {exc}", err=True)
            failures += 1
    return failures


@cli.command()
@click.argument("task_ids", nargs=-1, required=True, metavar="ID...")
@click.pass_context
def cancel(ctx: click.Context, task_ids: tuple[str, ...]) -> None:
    """Cancel tasks that have not started (kept in failed/ as Cancelled, counted as cancelled)."""
    from spool.events import outbox_for
    from spool.manage import cancel as cancel_task

    settings = settings_of(ctx)
    outbox = outbox_for(settings)
    failures = apply_each(
        task_ids,
        lambda task_id: cancel_task(settings.root, task_id, outbox=outbox),
        "cancelled",
    )
    ctx.exit(1 if failures else 0)


@cli.command()
@click.argument("state", type=click.Choice(["done", "failed"]))
@click.option(
    "--older-than", metavar="DURATION", help="Only tasks finished at least this long ago."
)
@click.option("--queue", "-q", metavar="Q", help="Only this queue.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.pass_context
def purge(
    ctx: click.Context, state: str, older_than: str | None, queue: str | None, dry_run: bool
) -> None:
    """Delete finished tasks (done or failed), e.g. purge done --older-than 7d."""
    from spool.manage import purge as purge_tasks

    settings = settings_of(ctx)
    age = duration_option(older_than, "--older-than")
    hidden = not sys.stderr.isatty()
    bar = click.progressbar(length=0, label="purging", file=sys.stderr, hidden=hidden)
    with bar, user_errors():
        result = purge_tasks(settings.root, state, age, queue_option(queue), dry_run, bar.update)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {result.matched if dry_run else result.deleted} {state} entr(y/ies)")


@cli.command()
@click.argument("queue")
@click.option("--reason", default="", help="Shown by spool status.")
@click.pass_context
def pause(ctx: click.Context, queue: str, reason: str) -> None:
    """Pause QUEUE: workers (on any host) claim nothing from it until resumed."""
    from spool.manage import pause as pause_queue

    settings = settings_of(ctx)
    with user_errors():
        pause_queue(queue_dirs(settings.root, queue), reason)
    click.echo(f"paused {queue}")


@cli.command()
@click.argument("queue")
@click.pass_context
def resume(ctx: click.Context, queue: str) -> None:
    """Resume a paused QUEUE."""
    from spool.manage import resume as resume_queue

    settings = settings_of(ctx)
    with user_errors():
        was = resume_queue(queue_dirs(settings.root, queue))
    click.echo(f"resumed {queue}" if was else f"{queue} was not paused")


@cli.command()
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
    from spool.top import run

    settings = settings_of(ctx)
    in_place = sys.stdout.isatty() and not once

    def show(frame: str) -> None:
        if in_place:
            click.clear()
        click.echo(frame)

    with user_errors(), contextlib.suppress(KeyboardInterrupt):
        run(settings.root, interval, show, frames=1 if once else None)


@cli.command()
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="Write to PATH atomically (node_exporter textfile collector) instead of printing.",
)
@click.pass_context
def metrics(ctx: click.Context, textfile: str | None) -> None:
    """Queue depths, oldest waiting age, done/failed counters, durations: Prometheus text."""
    from spool.metrics import render, write_textfile

    settings = settings_of(ctx)
    with user_errors():
        if textfile is None:
            click.echo(render(settings.root), nl=False)
        else:
            try:
                write_textfile(settings.root, Path(textfile))
            except OSError as exc:
                raise click.ClickException(f"cannot write {textfile}: {exc.strerror}") from exc


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="One line of JSON (default: indented).")
@click.pass_context
def show(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show one task's file with its queue, state and outcome (any queue, any state), as JSON."""
    app = Spool(settings=settings_of(ctx))
    with user_errors():
        shown = app.show(task_id)
    click.echo(json.dumps(shown, ensure_ascii=False, indent=None if as_json else 2))


@cli.command()
@click.argument("task_ids", nargs=-1, required=True, metavar="ID...")
@click.option(
    "--timeout", type=click.FloatRange(min=0), metavar="S", help="Give up after S seconds (exit 3)."
)
@click.pass_context
def wait(ctx: click.Context, task_ids: tuple[str, ...], timeout: float | None) -> None:
    """Wait for tasks to finish; print each result as JSON. Exit 0 all done, 1 one failed (or is
    unknown), 3 timed out. With one ID the result alone is printed; with several, one line each:
    {"id", "state", "result" or "error"}."""
    app = Spool(settings=settings_of(ctx))
    deadline = None if timeout is None else time.monotonic() + timeout
    code = 0
    for task_id in task_ids:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            result = app.wait(task_id, left)
            line: dict[str, Any] = {"id": task_id, "state": "done", "result": result}
        except TaskFailed as exc:
            line = {"id": task_id, "state": "failed", "error": exc.error}
            click.echo(f"Error: {exc}", err=True)
            code = max(code, 1)
        except WaitTimeout:
            line = {"id": task_id, "state": "waiting"}
            click.echo(f"Error: task {task_id} did not finish in time", err=True)
            code = 3
        except SpoolError as exc:
            line = {"id": task_id, "state": "unknown"}
            click.echo(f"Error: {exc}", err=True)
            code = max(code, 1)
        if len(task_ids) > 1:
            click.echo(json.dumps(line, ensure_ascii=False))
        elif "result" in line:
            click.echo(json.dumps(line["result"], ensure_ascii=False))
        elif "error" in line:
            click.echo(json.dumps(line["error"], indent=2, ensure_ascii=False))
    ctx.exit(code)


@cli.command()
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="Log lines as text or JSON."
)
@click.pass_context
def scheduler(ctx: click.Context, log_format: str | None) -> None:
    """Enqueue the periodic tasks of the config's [schedule] table (resident)."""
    from spool.scheduler import Scheduler, load_entries

    def run(settings: Settings, reload: Callable[[], Settings]) -> int:
        return Scheduler(settings, load_entries(settings), reload).run()

    run_resident(ctx, log_format, run)


@cli.command()
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="Log lines as text or JSON."
)
@click.pass_context
def notify(ctx: click.Context, log_format: str | None) -> None:
    """Deliver completion events to the sinks of the config's [notify] (resident)."""
    from spool.notify import run_notifier

    run_resident(ctx, log_format, run_notifier)


@cli.command("mqtt-intake")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="Log lines as text or JSON."
)
@click.pass_context
def mqtt_intake(ctx: click.Context, log_format: str | None) -> None:
    """Enqueue the tasks published to the MQTT topic of the config's [mqtt_intake] (resident)."""
    from spool.mqtt_intake import run_intake

    run_resident(ctx, log_format, run_intake)


def run_resident(
    ctx: click.Context,
    log_format: str | None,
    runner: Callable[[Settings, Callable[[], Settings]], int],
) -> None:
    """Run a resident process that reloads its settings on request; exit with its code."""
    from spool.logs import setup_logging

    settings = settings_of(ctx)
    obj = ctx.ensure_object(dict)
    setup_logging(log_format or settings.log_format, settings.log_level)

    def reload() -> Settings:
        return load_settings(obj.get("root"), obj.get("config"))

    with user_errors():
        code = runner(settings, reload)
    ctx.exit(code)


@cli.group()
def schedule() -> None:
    """Look at the schedule, or run one of its entries now."""


@schedule.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def schedule_ls(ctx: click.Context, as_json: bool) -> None:
    """Each schedule entry with its next run times and last fired slot."""
    from spool.scheduler import describe, load_entries

    settings = settings_of(ctx)
    with user_errors():
        rows = describe(settings, load_entries(settings, check_tasks=False), time.time())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no schedule entries (add [schedule.NAME] tables to the config)")
    catalog = Catalog.load(settings.root)
    for row in rows:  # (no queue set: the one its handler declares, as the scheduler routes it)
        queue = row["queue"] or (catalog.entry(row["task"]) or {}).get("queue") or "default"
        where = f"{row['task']} on {queue}"
        click.echo(f"{row['name']}: {where}, {row['when']}, misfire={row['misfire']}")
        click.echo(f"  last fired: {row['last_fired'] or 'never'}")
        click.echo(f"  next: {', '.join(row['next'])}")


@schedule.command("run")
@click.argument("name")
@click.pass_context
def schedule_run(ctx: click.Context, name: str) -> None:
    """Enqueue entry NAME's task now (outside its slots); print the task id."""
    from spool.scheduler import enqueue_now, load_entries

    settings = settings_of(ctx)
    with user_errors():
        entries = load_entries(settings, check_tasks=False)
        if name not in entries:
            known = ", ".join(entries) or "none"
            raise bad("NAME", f"no schedule entry {name!r} (entries: {known})")
        click.echo(enqueue_now(settings, entries[name]))


@cli.command()
@click.option("--host", metavar="ADDR", help="Address to bind (default: [web] host, 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Port (default: [web] port, 8750).",
)
@click.pass_context
def web(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the dashboard and the HTTP API (enqueue, retry, cancel, metrics)."""
    from spool.web import is_loopback, listen, serve

    settings = settings_of(ctx)
    host = host or settings.web_host
    port = port or settings.web_port
    if not is_loopback(host) and not settings.web_token:
        raise UsageProblem(
            f"--host {host}: refusing a non-loopback address without a token "
            "(set SPOOL_WEB_TOKEN or [web] token)"
        )
    with user_errors():
        sock = listen(host, port)  # before the address is announced: a port in use is one line
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"spool web: http://{shown}:{port}/ (root {settings.root})", err=True)
    if not settings.web_token:
        click.echo(
            "spool web: no token configured: actions and POST /api/tasks are refused "
            "(set SPOOL_WEB_TOKEN or [web] token)",
            err=True,
        )
    with user_errors(), sock:
        code = serve(settings, host, port, sock)
    ctx.exit(code)


@cli.command()
@click.option(
    "--workers", type=click.IntRange(min=1), metavar="N", help="Worker processes (default: config)."
)
@click.pass_context
def up(ctx: click.Context, workers: int | None) -> None:
    """Run supervisord in the foreground with the workers (and scheduler); Ctrl-C stops all."""
    from spool.up import run_up

    settings = settings_of(ctx)
    with user_errors():
        code = run_up(settings, workers)
    ctx.exit(code)


@cli.command("tasks")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (a JSON array).")
@click.pass_context
def tasks_command(ctx: click.Context, as_json: bool) -> None:
    """Load the configured task modules, publish them, and list every published task."""
    from spool.execute import Executor
    from spool.manifest import loader_id, publish, task_table
    from spool.workers import is_alive

    settings = settings_of(ctx)
    failed = False
    if settings.tasks:
        executor = Executor(settings.tasks, str(settings.project_dir))
        try:
            loaded = executor.start()
        except ConfigError as exc:
            click.echo(f"spool: {exc}", err=True)
            failed = True
        else:
            with user_errors():
                publish(
                    settings.root,
                    loader_id(),
                    loaded,
                    time.time(),
                    is_worker=False,
                    is_live=lambda worker_id: is_alive(settings.root, worker_id),
                    grace_seconds=settings.unknown_task_grace_seconds,
                )
        finally:
            executor.stop()
    with user_errors():
        rows = task_table(
            Catalog.load(settings.root), lambda worker_id: is_alive(settings.root, worker_id)
        )
    click.echo(json.dumps(rows, indent=2) if as_json else render_tasks(rows))
    ctx.exit(1 if failed else 0)


def render_tasks(rows: list[dict[str, Any]]) -> str:
    from spool.signature import render

    if not rows:
        return "no tasks published (no worker has run, and the config names no tasks modules)"
    table = [("TASK", "QUEUE", "SIGNATURE", "LIVE WORKERS", "DOC")]
    for row in rows:
        workers = len(row["workers"])
        table.append(
            (
                row["name"],
                str(row.get("queue") or "default"),
                render(row.get("params")),
                str(workers) if workers else "none",
                str(row.get("doc") or ""),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4] for r in table
    ]
    return "\n".join(line.rstrip() for line in lines)


@cli.command("supervisor-config")
@click.option(
    "--workers", type=click.IntRange(min=1), metavar="N", help="Worker processes (default: config)."
)
@click.option("--user", metavar="USER", help="Run the programs as USER.")
@click.pass_context
def supervisor_config(ctx: click.Context, workers: int | None, user: str | None) -> None:
    """Print a Supervisor program block for a system install (/etc/supervisor/conf.d/)."""
    from spool.supervisor import render_program_block

    settings = settings_of(ctx)
    with user_errors():
        click.echo(render_program_block(settings, workers, user), nl=False)


@cli.command()
@click.option("--fs", "probe_fs", is_flag=True, help="Probe the filesystem (a few seconds).")
@click.option(
    "--other-mount",
    metavar="PATH",
    help="The root seen through another mount: are locks and listings shared? (implies --fs)",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object of all results.")
@click.pass_context
def doctor(ctx: click.Context, probe_fs: bool, other_mount: str | None, as_json: bool) -> None:
    """Check the root's filesystem from this host and say which mode is safe (exit 1 if none)."""
    from spool.doctor import examine, render
    from spool.layout import existing_queues

    settings = settings_of(ctx)
    if other_mount is not None and not Path(other_mount).is_dir():
        raise bad("--other-mount", f"{other_mount} is not a directory")
    if not settings.root.is_dir():
        raise bad("--root", f"{settings.root} is not a directory")
    other = None if other_mount is None else Path(other_mount)
    with user_errors():
        report = examine(
            settings.root,
            settings.config_path,
            existing_queues(settings.root),
            probe=probe_fs or other is not None,
            other=other,
            lease_seconds=settings.lease_seconds,
        )
    click.echo(json.dumps(report, indent=2) if as_json else render(report))
    ctx.exit(0 if report["safe"] else 1)


def main() -> None:
    cli(prog_name="spool")


__all__ = ["TaskNotFound", "cli", "main"]
