"""Handlers by name, and the Task handle that @app.task puts in front of a function.

A worker finds tasks by importing the modules the config names and collecting every Task
(and every task of every Spool object) they define at module level; it never imports or
calls anything a task file names.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from spool.chain import Step
from spool.errors import ConfigError
from spool.signature import params_of

if TYPE_CHECKING:
    from spool.app import Spool

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class TaskOptions:
    """Defaults a task carries; a task file's own fields win over them."""

    name: str
    queue: str = "default"
    max_retries: int | None = None
    timeout: float | None = None
    retry_backoff: float | None = None
    priority: int | None = None
    max_lost: int | None = None  # lost attempts (worker or handler process died) before failed/
    at_most_once: bool = False  # a lost attempt goes straight to failed/

    def describe(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "retry_backoff": self.retry_backoff,
            "priority": self.priority,
            "max_lost": self.max_lost,
            "at_most_once": self.at_most_once,
        }


class Task(Generic[P, R]):
    """A registered handler: call it directly, or enqueue it with .delay() / .enqueue()."""

    def __init__(self, app: Spool, fn: Callable[P, R], options: TaskOptions) -> None:
        self.app, self.fn, self.options = app, fn, options
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", options.name)
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        return self.options.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue}>"

    @cached_property
    def described(self) -> dict[str, Any]:
        """describe(), once (a producer that registered the task checks against it)."""
        return self.describe()

    def describe(self) -> dict[str, Any]:
        """What the task manifest says of this task: options, parameters, doc, version."""
        doc = inspect.getdoc(self.fn) or ""
        return {
            **self.options.describe(),
            "params": params_of(self.fn),
            "doc": doc.strip().splitlines()[0] if doc.strip() else "",
            "module": getattr(self.fn, "__module__", None),
            "version": module_version(self.fn),
        }

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue a run with these arguments; return the task id once it is durable."""
        return self.app.enqueue(
            self.name,
            args=list(args),
            kwargs=dict(kwargs),
            queue=self.options.queue,
            priority=self.options.priority,
        )

    def s(self, *args: Any, **kwargs: Any) -> Step:
        """This task with these arguments as a step of a chain or batch (not enqueued yet)."""
        options = {"queue": self.options.queue, "priority": self.options.priority}
        return Step(self.name, args, kwargs, {k: v for k, v in options.items() if v is not None})

    def enqueue(
        self,
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Enqueue with options (delay, not_before, priority, max_retries, timeout,
        unique_key, id, queue); return the task id once it is durable."""
        options.setdefault("queue", self.options.queue)
        options.setdefault("priority", self.options.priority)
        return self.app.enqueue(self.name, args=args, kwargs=kwargs, **options)


class Registry:
    """Tasks by name, for one Spool object."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task[Any, Any]] = {}

    def add(self, task: Task[Any, Any]) -> None:
        self.tasks[task.name] = task

    def get(self, name: str) -> Task[Any, Any] | None:
        return self.tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.tasks

    def __len__(self) -> int:
        return len(self.tasks)


def import_task_modules(names: Iterable[str], project_dir: str) -> list[ModuleType]:
    """Import the operator's configured task modules. Raises: ConfigError."""
    if project_dir not in sys.path:
        sys.path.insert(0, project_dir)
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except Exception as exc:
            raise ConfigError(
                f"cannot import tasks module {name!r}: {type(exc).__name__}: {exc}"
            ) from exc
    return modules


def collect_tasks(modules: Iterable[ModuleType]) -> dict[str, Task[Any, Any]]:
    """Every task the modules define, whichever Spool object decorated it. Raises: ConfigError."""
    from spool.app import Spool

    found: dict[str, Task[Any, Any]] = {}

    def add(task: Task[Any, Any], module: ModuleType) -> None:
        other = found.get(task.name)
        if other is not None and other.fn is not task.fn:
            raise ConfigError(
                f"task name {task.name!r} is registered twice (again in {module.__name__})"
            )
        found[task.name] = task

    for module in modules:
        for value in list(vars(module).values()):
            if isinstance(value, Task):
                add(value, module)
            elif isinstance(value, Spool):
                for task in value.registry.tasks.values():
                    add(task, module)
    return found


def module_version(fn: Callable[..., Any]) -> str:
    """A short hash of the file that defines `fn` ("" when it has none)."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    path = getattr(module, "__file__", None)
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:12]
    except OSError:
        return ""
