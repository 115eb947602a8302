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
