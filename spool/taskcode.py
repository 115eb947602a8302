"""The task code a worker serves: its handler process (see execute), the tasks that process
registered with their options, and what follows from them: each task's retry policy and timeout,
the task manifest the worker publishes (see manifest), and reloads (see reload).

A reload starts a new handler process and swaps it in only once it imported every module; a
module that does not import leaves the old one serving. A handler process started again by the
executor (after a timeout or a crash) imports the modules as they are now: the worker then
serves what it registered (follow_restart).
"""

from __future__ import annotations

import contextlib
import logging
import time

from spool.config import Settings
from spool.decision import RetryPolicy
from spool.envelope import JSON, TaskDict, parse_rate
from spool.errors import ConfigError
from spool.execute import Executor
from spool.layout import output_scratch
from spool.manifest import CatalogCache, publish, unknown_fate
from spool.output import Scratch
from spool.registry import TaskOptions, first, task_changes
from spool.signature import binding_error, render
from spool.workers import WorkerLock, is_alive
from spool.workflows.caps import Cap
from spool.workflows.rates import Limit

log = logging.getLogger(__name__)
HOLD_UNKNOWN_SECONDS = 10.0  # a task only other workers know is looked at again after this


class TaskCode:
    """One worker's handler process and the tasks it serves."""

    def __init__(self, settings: Settings, worker_id: str, lock: WorkerLock) -> None:
        self.settings, self.worker_id, self.lock = settings, worker_id, lock
        self.executor = self.new_executor()
        self.tasks: dict[str, TaskOptions] = {}
        self.policies: dict[str, RetryPolicy] = {}  # per task name (see policy_for)
        self.reloads = 0
        self.catalogs = CatalogCache(settings.root)

    def new_executor(self) -> Executor:
        return Executor(
            self.settings.tasks,
            str(self.settings.project_dir),
            on_spawn=lambda pid: self.lock.update(handler_pid=pid),
            output=Scratch(
                output_scratch(self.settings.root, self.worker_id),
                self.settings.output_limit_bytes,
            ),
        )

    def start(self) -> None:
        """Start the handler process and publish its tasks. Raises: SpoolError."""
        self.tasks = self.executor.start()
        self.loaded({}, self.tasks)

    def reload(self) -> None:
        """Load the task modules again in a new handler process and swap it in; if they do not
        load, say why in one line and keep the old handler process serving."""
        fresh = self.new_executor()
        try:
            tasks = fresh.start()
        except (ConfigError, OSError) as exc:
            fresh.kill()
            if self.executor.proc is not None:  # its group, for cleanup if the worker dies
                with contextlib.suppress(OSError):
                    self.lock.update(handler_pid=self.executor.proc.pid)
            why = " ".join(str(exc).splitlines())
            log.error("reload failed, the previous task code keeps serving: %s", why)
            return
        old_executor, self.executor = self.executor, fresh
        old_executor.stop()
        old, self.tasks = self.tasks, tasks
        self.reloads += 1
        self.loaded(old, tasks)

    def follow_restart(self) -> None:
        """If the handler process was started again (after a timeout or a crash), serve what
        it registered, and say so if that changed."""
        if self.executor.tasks is self.tasks:
            return
        old, self.tasks = self.tasks, self.executor.tasks
        if task_changes(old, self.tasks):
            self.reloads += 1
            self.loaded(old, self.tasks)

    def loaded(self, old: dict[str, TaskOptions], new: dict[str, TaskOptions]) -> None:
        """The tasks this worker serves are now `new` (at start-up `old` is {}, and the
        "started" line names them): publish them, and log what a reload changed."""
        self.policies.clear()
        self.publish(time.time())
        if not self.reloads:
            return
        changes = task_changes(old, new)
        log.info(
            "reloaded the task code: %s",
            "; ".join(changes) or "same tasks, same options",
        )

    def publish(self, now: float) -> None:
        """Publish what this worker serves in the task manifest (see spool.manifest)."""
        root = self.settings.root
        try:
            publish(
                root,
                self.worker_id,
                self.tasks,
                now,
                is_worker=True,
                is_live=lambda worker_id: is_alive(root, worker_id),
                grace_seconds=self.settings.unknown_task_grace_seconds,
            )
        except OSError as exc:  # producers then route by older manifests, or not at all
            log.error("cannot publish the task manifest: %s", exc)

    def unbound(self, task: TaskDict) -> str | None:
        """Why the task's arguments do not bind to its handler's parameters, or None."""
        name = task["task"]
        params = self.tasks[name].params
        unbound = binding_error(params, task.get("args", []), task.get("kwargs", {}))
        return None if unbound is None else f"BadArguments: {name}{render(params)}: {unbound}"

    def wait_for_unknown(self, name: str, now: float, now_mono: float) -> float | None:
        """A task this worker cannot run: seconds to leave it for the workers that know it (a
        deploy under way), or None to reject it when none has known it for the grace (see
        manifest.unknown_fate)."""
        alive: dict[str, bool] = {}

        def is_live(worker_id: str) -> bool:
            if worker_id not in alive:
                alive[worker_id] = is_alive(self.settings.root, worker_id)
            return alive[worker_id]

        return unknown_fate(
            self.catalogs.current(now_mono),
            name,
            is_live,
            now,
            self.settings.unknown_task_grace_seconds,
            HOLD_UNKNOWN_SECONDS,
        )

    def options_of(self, task: TaskDict) -> TaskOptions:
        """The options the task's name is registered with (the defaults for an unknown one)."""
        name = task["task"]
        return self.tasks.get(name) or TaskOptions(name)

    def policy_for(self, task: TaskDict) -> RetryPolicy:
        """The task's retry policy: its task's (kept per registered name until the code is
        reloaded), unless the task file sets its own retries, losses or exception lists."""
        # (names no handler registered are not kept: files may name anything)
        if task["task"] not in self.tasks or any(field in task for field in OWN_POLICY_FIELDS):
            return self.new_policy(task)
        policy = self.policies.get(task["task"])
        if policy is None:
            policy = self.policies[task["task"]] = self.new_policy(task)
        return policy

    def new_policy(self, task: TaskDict) -> RetryPolicy:
        options = self.options_of(task)
        s = self.settings
        max_retries = first(task.get("max_retries"), options.max_retries, s.max_retries)
        backoff = first(options.retry_backoff, s.retry_backoff_seconds)
        max_lost = first(task.get("max_lost"), options.max_lost, s.max_lost)
        return RetryPolicy(
            int(max_retries),
            float(backoff),
            s.retry_backoff_max_seconds,
            s.retry_jitter,
            max_lost=int(max_lost),
            at_most_once=options.at_most_once,
            retry_on=type_names(task.get("retry_on"), options.retry_on),
            no_retry_on=type_names(task.get("no_retry_on"), options.no_retry_on),
        )

    def known_policy(self, task: TaskDict) -> RetryPolicy | None:
        """The retry policy of a task this worker can run; None for an unknown task."""
        return self.policy_for(task) if task["task"] in self.tasks else None

    def limit_for(self, task: TaskDict, queue: str) -> Limit | None:
        """The rate the task's start is held to (see workflows.rates): the task file's `rate`, else
        its task's `rate=`, else its queue's [queues.NAME] rate; shared under the task file's
        `rate_key`, else the task's name (or the queue's, for a queue's rate)."""
        shared = task.get("rate_key")
        own = task.get("rate") or self.options_of(task).rate
        if own is not None:
            return Limit(shared or f"task:{task['task']}", parse_rate(own))
        queue_rate = self.settings.queue_rates.get(queue)
        if queue_rate is None:
            return None
        return Limit(shared or f"queue:{queue}", parse_rate(queue_rate))

    def cap_for(self, task: TaskDict) -> Cap | None:
        """How many tasks like this one may run at once (see workflows.caps): the task file's
        `concurrency`, else its task's `concurrency=`; under the task file's `concurrency_key`,
        else the task's name."""
        limit = task.get("concurrency") or self.options_of(task).concurrency
        if limit is None:
            return None
        return Cap(task.get("concurrency_key") or f"task:{task['task']}", int(limit))

    def timeout_for(self, task: TaskDict) -> float:
        options = self.options_of(task)
        return float(first(task.get("timeout"), options.timeout, self.settings.timeout_seconds))


OWN_POLICY_FIELDS = ("max_retries", "max_lost", "retry_on", "no_retry_on")  # (in a task file)


def type_names(own: JSON, registered: tuple[str, ...]) -> tuple[str, ...]:
    """A task file's own retry_on / no_retry_on (a list of names, see envelope) wins."""
    return tuple(own) if isinstance(own, list) else registered
