"""spool: a file-spool background-task queue. The spool is a directory tree; no broker."""

from spool.app import Spool
from spool.context import Context, Fail, NoContext, Retry, current, progress
from spool.errors import (
    BadArguments,
    DiskFault,
    InvalidTask,
    SpoolError,
    TaskFailed,
    TaskNotFound,
    UnknownTaskName,
    WaitTimeout,
)
from spool.registry import Task

__version__ = "0.1.0"
__all__ = [
    "BadArguments",
    "Context",
    "DiskFault",
    "Fail",
    "InvalidTask",
    "NoContext",
    "Retry",
    "Spool",
    "SpoolError",
    "Task",
    "TaskFailed",
    "TaskNotFound",
    "UnknownTaskName",
    "WaitTimeout",
    "__version__",
    "current",
    "progress",
]
