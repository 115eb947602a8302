"""spool: a file-spool background-task queue. The spool is a directory tree; no broker."""

from spool.app import Spool
from spool.errors import SpoolError, TaskFailed, TaskNotFound, WaitTimeout
from spool.registry import Task

__version__ = "0.1.0"
__all__ = [
    "Spool",
    "SpoolError",
    "Task",
    "TaskFailed",
    "TaskNotFound",
    "WaitTimeout",
    "__version__",
]
