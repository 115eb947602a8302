"""Errors spool raises on purpose; every one of them is a SpoolError."""

from __future__ import annotations


def error_dict(kind: str, message: str, tb: str = "") -> dict[str, str]:
    """How a task's error is recorded: {type, message, traceback}."""
    return {"type": kind, "message": message, "traceback": tb}


def exception_name(kind: type) -> str:
    """How an exception type is named in errors, retry_on and no_retry_on: `module.Name`, the
    builtins by their bare name (`OSError`)."""
    return f"{kind.__module__}.{kind.__qualname__}".removeprefix("builtins.")


class SpoolError(Exception):
    """Base for every error spool raises on purpose."""


class ConfigError(SpoolError):
    """The configuration (file, environment or flags) cannot be used."""


class InvalidQueueName(SpoolError):
    """A queue name does not match [A-Za-z0-9_-]{1,64}."""


class InvalidTask(SpoolError):
    """A task given to a producer is not valid (bad field type, bad id, ...)."""


class Refused(InvalidTask):
    """A valid task that the published tasks refuse: unknown name, or arguments that do not
    bind (HTTP 422; the CLI's exit 2)."""


class UnknownTaskName(Refused):
    """A producer named a task that no published manifest knows (see spool.manifest)."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        hint = f" (did you mean {' or '.join(suggestions)}?)" if suggestions else ""
        super().__init__(f"unknown task {name!r}: no worker serves it{hint}")
        self.name, self.suggestions = name, suggestions


class BadArguments(Refused):
    """A task's arguments do not bind to its handler's parameters."""


class InvalidTaskFile(SpoolError):
    """A file in incoming/ is not a runnable task; `reason` says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


class UnknownTask(InvalidTaskFile):
    """The file names a task that no configured module registered."""


class DiskFault(SpoolError, OSError):
    """A write to the spool failed: the disk is full, the quota used up, or the device fails.

    Also an OSError, whose `errno` is the original one (ENOSPC, EDQUOT or EIO).
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


class TaskNotFound(SpoolError):
    """No task with this id exists in any queue."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"unknown task id: {task_id}")
        self.task_id = task_id


class TaskFailed(SpoolError):
    """The task ended in failed/; `error` holds its last error."""

    def __init__(self, task_id: str, error: dict[str, object]) -> None:
        kind = error.get("type", "Error")
        message = error.get("message", "")
        super().__init__(f"task {task_id} failed: {kind}: {message}")
        self.task_id, self.error = task_id, error


class WaitTimeout(SpoolError, TimeoutError):
    """The task did not finish within the time given to wait()."""

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(f"task {task_id} did not finish within {timeout:g} s")
        self.task_id, self.timeout = task_id, timeout


class BatchNotFound(SpoolError):
    """No batch with this id exists under the root."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"unknown batch id: {batch_id}")
        self.batch_id = batch_id


class BatchExists(SpoolError):
    """A batch with this id was made before (batch ids are never reused)."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"batch {batch_id} exists already (give another name)")
        self.batch_id = batch_id
