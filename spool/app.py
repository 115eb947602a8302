"""Spool: the facade a program uses: configuration, task registration, enqueue, wait, status.

Enqueue goes through spool.producer (workflows.batches, spool.chain), wait and show find tasks
through spool.lookup, status is spool.inspect's; eager mode runs tasks in spool.eager.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from spool import producer
from spool.chain import Step, chain_ids, chain_task
from spool.config import Settings, load_settings
from spool.errors import TaskFailed, TaskNotFound, WaitTimeout
from spool.layout import QueueDirs
from spool.lookup import finished, locate, locate_many, read_found
from spool.manifest import Catalog, CatalogCache
from spool.registry import (
    Registry,
    Task,
    TaskOptions,
    checked_concurrency,
    checked_rate,
    exception_names,
)

if TYPE_CHECKING:
    from spool.eager import EagerRunner
    from spool.workflows.batches import Summary

P = ParamSpec("P")
R = TypeVar("R")
WAIT_FULL_LOOK_SECONDS = 1.0


class Spool:
    """A spool directory tree and the tasks registered for it.

    `Spool(root=...)` uses defaults for the rest; `Spool.from_config()` follows the config
    rules (flags > environment > conf/spool.toml). With `eager=True`, enqueue runs the task
    at once in this process, for tests and scripts (see spool.eager).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        settings: Settings | None = None,
        eager: bool = False,
    ) -> None:
        if settings is None:
            settings = Settings(root=Path(root)) if root is not None else load_settings()
        elif root is not None:
            settings = Settings(**{**settings.__dict__, "root": Path(root)})
        self.settings = settings
        self.eager = eager
        self.registry = Registry()
        self.catalogs = CatalogCache(settings.root)

    # (eager mode and the read side are imported when used: a producer's or a handler
    # process's start-up does not pay for them)
    @cached_property
    def eager_runner(self) -> EagerRunner:
        from spool.eager import EagerRunner

        return EagerRunner(self.settings, self.registry)

    @classmethod
    def from_config(
        cls,
        config: str | Path | None = None,
        *,
        root: str | Path | None = None,
        eager: bool = False,
    ) -> Spool:
        """A Spool configured by flags-equivalents, SPOOL_ROOT/SPOOL_CONFIG, or conf/spool.toml."""
        settings = load_settings(
            root_flag=None if root is None else str(root),
            config_flag=None if config is None else str(config),
        )
        return cls(settings=settings, eager=eager)

    @property
    def root(self) -> Path:
        return self.settings.root

    def __repr__(self) -> str:
        return f"<Spool root={str(self.root)!r} tasks={len(self.registry)}>"

    # ---- registration ----------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        max_retries: int | None = None,
        timeout: float | None = None,
        retry_backoff: float | None = None,
        priority: int | None = None,
        max_lost: int | None = None,
        at_most_once: bool = False,
        retry_on: Iterable[type[BaseException] | str] = (),
        no_retry_on: Iterable[type[BaseException] | str] = (),
        rate: str | None = None,
        concurrency: int | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(  # type: ignore[misc]  # (the overloads cover both decorator forms)
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        max_retries: int | None = None,
        timeout: float | None = None,
        retry_backoff: float | None = None,
        priority: int | None = None,
        max_lost: int | None = None,
        at_most_once: bool = False,
        retry_on: Iterable[type[BaseException] | str] = (),
        no_retry_on: Iterable[type[BaseException] | str] = (),
        rate: str | None = None,
        concurrency: int | None = None,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a handler (as `@app.task` or `@app.task(...)`); its name is the function's.

        `retry_on`: only errors of these types (or their subclasses) are retried; `no_retry_on`:
        these never are (types, or their names). Raises: TypeError (neither).
        """
        only, never = (
            exception_names("retry_on", retry_on),
            exception_names("no_retry_on", no_retry_on),
        )

        def register(func: Callable[P, R]) -> Task[P, R]:
            options = TaskOptions(
                name=name or func.__name__,
                queue=queue,
                max_retries=max_retries,
                timeout=timeout,
                retry_backoff=retry_backoff,
                priority=priority,
                max_lost=max_lost,
                at_most_once=at_most_once,
                retry_on=only,
                no_retry_on=never,
                rate=checked_rate(rate),
                concurrency=checked_concurrency(concurrency),
            )
            handle = Task(self, func, options)
            self.registry.add(handle)
            return handle

        return register(fn) if fn is not None else register

    # ---- producing -------------------------------------------------------------------

    def enqueue(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        check: bool = True,
        **options: Any,
    ) -> str:
        """Enqueue task `name` durably and return its id; the name need not be registered here.

        With no queue, the task goes to the queue its handler declares (see spool.manifest).
        Options: delay, not_before, priority, max_retries, timeout, unique_key, id.
        `check=False` skips the refusal of unknown names and unbound arguments.
        Raises: InvalidTask (UnknownTaskName, BadArguments), InvalidQueueName; DiskFault (full
        disk: nothing was written).
        """
        task = producer.build_task(name, args, kwargs, **options)
        if self.eager:
            return self.eager_runner.run(task)
        return producer.enqueue(self.settings, task, queue, catalog=self.catalog(), check=check)

    def enqueue_many(
        self, tasks: Iterable[Mapping[str, Any]], queue: str | None = None, check: bool = True
    ) -> list[str]:
        """Enqueue many task dicts (as in a task file) with grouped syncs; durable on return.

        Raises: InvalidTask; DiskFault (full disk: none of them was written).
        """
        if self.eager:
            return [self.eager_runner.run(dict(task)) for task in tasks]
        return producer.enqueue_many(
            self.settings, tasks, queue, catalog=self.catalog(), check=check
        )

    def chain(self, *steps: Step, on_failure: Step | None = None) -> list[str]:
        """Enqueue `steps` as a chain: each runs after the one before it ended in done/ (see
        spool.chain); `on_failure` runs once if a step fails for good. Return every step's id
        (the later ones are derived, known now). Raises: as enqueue."""
        first = chain_task(steps, on_failure)
        first.pop("pass_result", None)  # (the first step has no parent)
        first_id = self.enqueue(first.pop("task"), check=True, **first)
        return chain_ids(first_id, len(steps))

    def batch(
        self,
        tasks: Iterable[Step | Mapping[str, Any]],
        *,
        then: Callbacks = None,
        on_failure: Callbacks = None,
        finally_: Callbacks = None,
        batch_id: str | None = None,
        check: bool = True,
    ) -> Batch:
        """Enqueue `tasks` (steps or task dicts) as one batch whose callbacks are enqueued once
        every member has ended: `then` if all are done, `on_failure` if any failed, `finally_`
        either way (see workflows.batches). Raises: as enqueue_many; BatchExists."""
        members = [t.to_task() if isinstance(t, Step) else dict(t) for t in tasks]
        callbacks = {
            key: as_task_objects(value)
            for key, value in (("then", then), ("on_failure", on_failure), ("finally", finally_))
            if value is not None
        }
        if self.eager:
            made, ids = self.eager_runner.run_batch(members, callbacks, batch_id)
        else:
            from spool.workflows import batches

            made, ids = batches.enqueue_batch(
                self.settings, members, callbacks, batch_id, catalog=self.catalog(), check=check
            )
        return Batch(made, ids)

    def batch_status(self, batch_id: str) -> Summary:
        """A batch's progress (total, done, failed, pending). Raises: BatchNotFound."""
        from spool.workflows import batches

        return batches.status(self.root, batch_id)

    def catalog(self) -> Catalog:
        """The published tasks, with those registered in this process winning."""
        local = {name: task.described for name, task in self.registry.tasks.items()}
        return self.catalogs.current(time.monotonic()).with_local(local)

    # ---- reading ---------------------------------------------------------------------

    def show(self, task_id: str) -> dict[str, Any]:
        """The task's file with its state and outcome, and its `workflow` links (parent,
        follow-ups, batch; see inspect.workflow) when it has any. Raises: TaskNotFound."""
        found = locate(self.root, task_id)
        if found is None:
            raise TaskNotFound(task_id)
        shown = read_found(found)
        if found.state == "processing":  # its last progress while it runs (see spool.context)
            from spool.inspect.beside import progress_of

            progress = progress_of(QueueDirs(self.root, found.queue), shown)
            if progress is not None:
                shown["progress"] = progress
        from spool.inspect.workflow import links_of

        links = links_of(self.root, shown)
        return {**shown, "workflow": links} if links else shown

    def state_of(self, task_id: str) -> str | None:
        """incoming, delayed, processing, done or failed; None for an unknown id."""
        found = locate(self.root, task_id)
        return found.state if found else None

    def wait(self, task_id: str, timeout: float | None = None) -> Any:
        """Block until the task finishes and return its result.

        Raises: TaskFailed (it ended in failed/), WaitTimeout (a TimeoutError), TaskNotFound.
        """
        if self.eager:
            return outcome_of(task_id, self.eager_runner.info(task_id))
        deadline = None if timeout is None else time.monotonic() + timeout
        found = locate(self.root, task_id)
        if found is None:
            raise TaskNotFound(task_id)
        from spool.watch import FinishWatch

        with FinishWatch(QueueDirs(self.root, found.queue)) as changed:
            next_full_look = time.monotonic() + WAIT_FULL_LOOK_SECONDS
            while True:
                if found is None:
                    raise TaskNotFound(task_id)
                if found.state not in ("done", "failed"):
                    found = finished(QueueDirs(self.root, found.queue), task_id) or found
                if found.state in ("done", "failed"):
                    return outcome_of(task_id, read_found(found))
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(task_id, timeout or 0.0)
                changed.wait(
                    WAIT_FULL_LOOK_SECONDS if left is None else min(left, WAIT_FULL_LOOK_SECONDS)
                )
                changed.clear()
                if time.monotonic() >= next_full_look:  # still anywhere? (cancelled, moved)
                    next_full_look = time.monotonic() + WAIT_FULL_LOOK_SECONDS
                    found = locate(self.root, task_id)

    def wait_many(
        self, task_ids: Iterable[str], timeout: float | None = None
    ) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """Wait for many tasks at once; yield each id with its file (as `show` gives it) when
        it finishes, None for an id found nowhere, and {"state": "waiting"} for those still
        unfinished at the timeout. One watch and one listing serve every id."""
        from spool.watch import FinishWatch

        deadline = None if timeout is None else time.monotonic() + timeout
        wanted = list(dict.fromkeys(task_ids))
        pending = locate_many(self.root, wanted)
        yield from ((task_id, None) for task_id in wanted if task_id not in pending)
        watched = [QueueDirs(self.root, q) for q in sorted({f.queue for f in pending.values()})]
        if not watched:
            return
        with FinishWatch(*watched) as changed:
            next_full_look = time.monotonic() + WAIT_FULL_LOOK_SECONDS
            while pending:
                changed.clear()  # (before looking: an arrival during the look is kept)
                for task_id, found in list(pending.items()):
                    if found.state not in ("done", "failed"):
                        found = finished(QueueDirs(self.root, found.queue), task_id) or found
                    if found.state in ("done", "failed"):
                        del pending[task_id]
                        yield task_id, read_found(found)
                left = None if deadline is None else deadline - time.monotonic()
                if pending and left is not None and left <= 0:
                    yield from ((task_id, {"state": "waiting"}) for task_id in pending)
                    return
                if pending:
                    changed.wait(WAIT_FULL_LOOK_SECONDS if left is None else min(left, 1.0))
                if pending and time.monotonic() >= next_full_look:  # cancelled, moved, gone?
                    next_full_look = time.monotonic() + WAIT_FULL_LOOK_SECONDS
                    now_at = locate_many(self.root, pending)
                    yield from ((task_id, None) for task_id in pending if task_id not in now_at)
                    pending = now_at

    def status(self) -> dict[str, Any]:
        """Counts per queue and state, oldest waiting age, live workers (`spool status --json`)."""
        from spool.inspect.status import spool_status

        return spool_status(self.root)


Callbacks = Step | Mapping[str, Any] | Sequence[Step | Mapping[str, Any]] | None


@dataclass(frozen=True)
class Batch:
    """A batch as enqueued: its id and its members' ids, in order."""

    id: str
    task_ids: list[str]


def as_task_objects(value: Callbacks) -> list[Any]:
    """Callbacks given as a step, a task dict, or a list of them, as task objects."""
    items = [value] if isinstance(value, Step | Mapping) else list(value or [])
    return [item.to_task() if isinstance(item, Step) else dict(item) for item in items]


def outcome_of(task_id: str, info: Mapping[str, Any]) -> Any:
    if info["state"] == "done":
        return info.get("result")
    error = info.get("error") or {
        "type": "Rejected",
        "message": (info.get("rejected") or {}).get("reason", "rejected"),
    }
    raise TaskFailed(task_id, error)
