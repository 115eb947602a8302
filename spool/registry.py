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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from spool.chain import Step
from spool.envelope import JSON, FieldError, is_int, is_number, parse_rate
from spool.errors import ConfigError, exception_name
from spool.layout import DEFAULT_QUEUE
from spool.signature import params_of

if TYPE_CHECKING:
    from spool.app import Spool

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class TaskOptions:
    """What a task is registered with: the options of @app.task (defaults a task file's own
    fields win over) and, once described, its handler's parameters, doc line, module and
    version. Workers, the handler process's pipe and the task manifest all carry this."""

    name: str
    queue: str = DEFAULT_QUEUE
    max_retries: int | None = None
    timeout: float | None = None
    retry_backoff: float | None = None
    priority: int | None = None
    max_lost: int | None = None  # lost attempts (worker or handler process died) before failed/
    at_most_once: bool = False  # a lost attempt goes straight to failed/
    retry_on: tuple[str, ...] = ()  # exception type names: only these are retried (empty: any)
    no_retry_on: tuple[str, ...] = ()  # exception type names never retried
    rate: str | None = None  # at most this many starts, e.g. "10/s" (see workflows.rates)
    concurrency: int | None = None  # at most this many running at once (see workflows.caps)
    params: JSON = field(default=None, hash=False)  # see spool.signature; None: not described
    doc: str = ""
    module: str | None = None
    version: str = ""  # a hash of the module file (see module_version)

    def to_json(self) -> dict[str, JSON]:
        """The task manifest's entry for this task (its name is the key, not a field)."""
        return {
            "queue": self.queue,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "retry_backoff": self.retry_backoff,
            "priority": self.priority,
            "max_lost": self.max_lost,
            "at_most_once": self.at_most_once,
            "retry_on": list(self.retry_on),
            "no_retry_on": list(self.no_retry_on),
            "rate": self.rate,
            "concurrency": self.concurrency,
            "params": self.params,
            "doc": self.doc,
            "module": self.module,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, name: str, obj: Mapping[str, JSON]) -> TaskOptions:
        """An entry as to_json wrote it; a field of the wrong type (a foreign or older
        manifest) reads as its default, as if it were missing."""
        queue, doc, module, version = (obj.get(k) for k in ("queue", "doc", "module", "version"))
        return cls(
            name=name,
            queue=queue if isinstance(queue, str) else DEFAULT_QUEUE,
            max_retries=whole(obj.get("max_retries")),
            timeout=seconds(obj.get("timeout")),
            retry_backoff=seconds(obj.get("retry_backoff")),
            priority=obj["priority"] if is_int(obj.get("priority")) else None,
            max_lost=whole(obj.get("max_lost")),
            at_most_once=bool(obj.get("at_most_once", False)),
            retry_on=names(obj.get("retry_on")),
            no_retry_on=names(obj.get("no_retry_on")),
            rate=valid_rate(obj.get("rate")),
            concurrency=whole(obj.get("concurrency")),
            params=obj.get("params"),
            doc=doc if isinstance(doc, str) else "",
            module=module if isinstance(module, str) else None,
            version=version if isinstance(version, str) else "",
        )


def names(value: JSON) -> tuple[str, ...]:
    """A list of exception type names (anything else reads as none)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return ()
    return tuple(value)


def exception_names(option: str, kinds: Iterable[type | str]) -> tuple[str, ...]:
    """retry_on / no_retry_on as names (see errors.exception_name). Raises: TypeError."""
    found = []
    for kind in kinds:
        if isinstance(kind, str) and kind:
            found.append(kind)
        elif isinstance(kind, type) and issubclass(kind, BaseException):
            found.append(exception_name(kind))
        else:
            raise TypeError(f"{option}: {kind!r} is neither an exception type nor its name")
    return tuple(found)


def checked_rate(rate: str | None) -> str | None:
    """A task's `rate=` as given, once it parses. Raises: ConfigError."""
    if rate is not None:
        try:
            parse_rate(rate)
        except FieldError as exc:
            raise ConfigError(f"@app.task(rate={rate!r}): {exc}") from None
    return rate


def checked_concurrency(concurrency: int | None) -> int | None:
    """A task's `concurrency=`, once it is a whole number >= 1. Raises: ConfigError."""
    if concurrency is not None and not (is_int(concurrency) and concurrency >= 1):
        raise ConfigError(f"@app.task(concurrency={concurrency!r}): must be an integer >= 1")
    return concurrency


def valid_rate(value: JSON) -> str | None:
    """A rate as registered, or None for a missing or malformed one (a foreign manifest)."""
    try:
        parse_rate(value)
    except FieldError:
        return None
    return str(value)


def whole(value: JSON) -> int | None:
    return int(value) if is_number(value) else None


def seconds(value: JSON) -> float | None:
    real = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if real else None  # (inf: no timeout, as registered)


def task_changes(old: Mapping[str, TaskOptions], new: Mapping[str, TaskOptions]) -> list[str]:
    """What changed between two sets of registered tasks, as phrases (a reload's log line)."""
    changes = []
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    if added:
        changes.append(f"added {', '.join(added)}")
    if removed:
        changes.append(f"removed {', '.join(removed)}")
    for name in sorted(set(old) & set(new)):
        before, after = old[name].to_json(), new[name].to_json()
        diffs = [
            f"{key} {before[key]!r} -> {after[key]!r}"
            for key in sorted(before)
            if before[key] != after[key]
        ]
        if diffs:
            changes.append(f"changed {name} ({', '.join(diffs)})")
    return changes


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
    def described(self) -> TaskOptions:
        """describe(), once (a producer that registered the task checks against it)."""
        return self.describe()

    def describe(self) -> TaskOptions:
        """What the task manifest says of this task: options, parameters, doc, version."""
        doc = inspect.getdoc(self.fn) or ""
        return replace(
            self.options,
            params=params_of(self.fn),
            doc=doc.strip().splitlines()[0] if doc.strip() else "",
            module=getattr(self.fn, "__module__", None),
            version=module_version(self.fn),
        )

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


def first(*values: Any) -> Any:
    """An option's value as it applies: the first that is not None, in the order task file,
    handler (TaskOptions), config."""
    for value in values:  # (a loop, not a generator: the worker asks this per task)
        if value is not None:
            return value
    raise ValueError("no value given")
