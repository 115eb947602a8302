"""Commands for producers: put tasks in (`enqueue`, `enqueue --from`, `enqueue --batch`) and
see which tasks the workers know (`tasks`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import click

from spool import producer
from spool.cli.common import (
    Duration,
    UsageProblem,
    bad,
    queue_option,
    settings_of,
    user_errors,
)
from spool.config import Settings
from spool.envelope import FieldError, parse_instant, validate_follow_ups
from spool.errors import (
    ConfigError,
    InvalidTask,
    SpoolError,
)
from spool.manifest import Catalog
from spool.workflows import batches

BATCH = 10_000


def parse_arg(text: str) -> Any:
    """An ARG as JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@click.command()
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
    type=Duration(),
    metavar="DURATION",
    help="Run no earlier than this from now (90s, 5m, 1h, 7d or seconds).",
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
    type=Duration(positive=True),
    metavar="DURATION",
    help="How long one attempt may run (90s, 5m, 1h or seconds).",
)
@click.option(
    "--unique", "unique_key", metavar="KEY", help="Skip if a task with KEY is pending or running."
)
@click.option("--id", "task_id", metavar="ID", help="Task id (default: a new time-sortable id).")
@click.option(
    "--then",
    "then_json",
    metavar="JSON",
    help="Follow-up task(s) to enqueue once TASK is done: a task object or an array of them "
    '(e.g. \'{"task": "notify", "args": [1], "pass_result": true}\').',
)
@click.option(
    "--then-on-failure",
    "then_on_failure_json",
    metavar="JSON",
    help="Follow-up task(s) to enqueue once TASK has failed for good (as --then).",
)
@click.option(
    "--finally",
    "finally_json",
    metavar="JSON",
    help="With --batch: task(s) to enqueue once every member has ended, done or failed.",
)
@click.option(
    "--batch",
    "batch_name",
    metavar="NAME",
    help="With --from: make the tasks one batch named NAME; --then runs once all are done, "
    "--then-on-failure once all have ended and any failed (see `spool batch NAME`).",
)
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
    then_json: str | None,
    then_on_failure_json: str | None,
    finally_json: str | None,
    batch_name: str | None,
) -> None:
    """Enqueue TASK with ARGs (each parsed as JSON when it parses); print its id.

    The tasks the workers serve are published under the root (see `spool tasks`): TASK goes
    to the queue its handler declares, and an unknown TASK or ARGs that do not fit its
    handler are refused (exit 2) unless --no-check.

    Put -- before ARGs that start with a dash: spool enqueue add -- -1 2
    """
    settings = settings_of(ctx)
    queue = queue_option(queue)
    then = follow_ups_option("--then", then_json)
    then_on_failure = follow_ups_option("--then-on-failure", then_on_failure_json)
    finally_ = follow_ups_option("--finally", finally_json)
    if (batch_name is not None or finally_ is not None) and from_file is None:
        raise UsageProblem("--batch and --finally go with --from FILE")
    with user_errors():
        catalog = Catalog.load(settings.root)
    if from_file is not None and batch_name is not None:
        if task is not None:
            raise UsageProblem("give either TASK or --from, not both")
        callbacks = {"then": then, "on_failure": then_on_failure, "finally": finally_}
        lines = list(read_jsonl(from_file))
        enqueue_batch_from(settings, lines, batch_name, callbacks, catalog, check=not no_check)
        warn_unchecked(settings, catalog, check=not no_check)
        return
    if from_file is not None:
        if then is not None or then_on_failure is not None or finally_ is not None:
            raise UsageProblem("--then with --from needs --batch (callbacks of the whole batch)")
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
            then=then,
            then_on_failure=then_on_failure,
        )
        click.echo(producer.enqueue(settings, built, queue, catalog=catalog, check=not no_check))
    warn_unchecked(settings, catalog, check=not no_check)


def follow_ups_option(option: str, text: str | None) -> list[Any] | None:
    """A --then value: a task object or an array of them, checked like a task file's `then`."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise bad(option, f"not valid JSON: {exc}") from None
    specs = [value] if isinstance(value, dict) else value
    try:
        validate_follow_ups(specs, "then")
    except FieldError as exc:
        raise bad(option, str(exc).replace("field 'then'", "the value")) from None
    return list(specs)


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


def enqueue_batch_from(
    settings: Settings,
    lines: list[tuple[int, dict[str, Any]]],
    name: str,
    callbacks: dict[str, list[Any] | None],
    catalog: Catalog,
    check: bool,
) -> None:
    """Enqueue a JSON-lines file as one batch (its record first, then every member)."""
    given = {key: value for key, value in callbacks.items() if value is not None}
    members = [obj for _, obj in lines]
    try:
        batch_id, ids = batches.enqueue_batch(
            settings, members, given, name, catalog=catalog, check=check
        )
    except InvalidTask as exc:  # "task N: reason" -> the line number
        position, _, reason = str(exc).partition(": ")
        number = position.split()[-1]
        if position.startswith("task ") and number.isdigit():
            raise bad("--from", f"line {lines[int(number) - 1][0]}: {reason}") from None
        raise bad("--batch", str(exc)) from None
    except SpoolError as exc:
        raise click.ClickException(str(exc)) from exc
    for task_id in ids:
        click.echo(task_id)
    click.echo(f"batch {batch_id}: enqueued {len(ids)} tasks", err=True)


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


@click.command("tasks")
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
