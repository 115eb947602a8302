"""What every command shares: one-line errors with their exit codes, the settings of the
root a command works on, and the checks of options several commands take."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import click

from spool.config import Settings, load_settings, parse_duration
from spool.errors import (
    ConfigError,
    InvalidQueueName,
    InvalidTask,
    SpoolError,
    TaskNotFound,
    WaitTimeout,
)
from spool.layout import check_queue_name, check_root
from spool.tables import split_span


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


class Duration(click.ParamType[float]):
    """A time span option: 90s, 5m, 1h, 7d or a number of seconds (exit 2 otherwise)."""

    name = "duration"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds < 0 or (self.positive and seconds == 0):
            limit = "more than 0 s" if self.positive else "0 s or more"
            self.fail(f"{value!r} must be {limit}", param, ctx)
        return seconds


def duration_option(value: str | None, hint: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise bad(hint, str(exc)) from None


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
        except OSError as exc:  # e.g. a root this user cannot write (a cancel request)
            why = (exc.strerror or str(exc)).lower()
            click.echo(f"Error: {task_id}: {why}: {exc.filename}", err=True)
            failures += 1
    return failures


def render_table(rows: list[list[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """`rows` (the first one the header) as lines of aligned columns, two spaces apart; the
    columns numbered in `right` (numbers) aligned to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def format_age(seconds: float) -> str:
    """A short time span: 0.4s, 42s, 5m07s, 3h12m, 2d04h."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{int(seconds)}s"
    big, unit, small, small_unit = split_span(seconds)
    return f"{big}{unit}{small:02d}{small_unit}"


def queues_of(worker: dict[str, object]) -> str:
    """The queues a worker serves: "all" for one that serves every queue (new ones too)."""
    if worker.get("all_queues"):
        return "all"
    queues = worker.get("queues")
    return ",".join(str(q) for q in queues) if isinstance(queues, list) else "?"
