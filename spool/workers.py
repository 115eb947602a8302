"""The registry of live workers: who runs, since when, on which host, and who died.

    <root>/.workers/<worker id>.lock      held (a file lock) by the worker for its whole life
    <root>/.workers/<worker id>.json      its info: pid, host, started_at, queues, handler_pid
    <root>/.workers/<worker id>.waiting   while it holds outcomes the disk refused
    <root>/.workers/<worker id>.out       the running attempt's output (see execute)

A worker proves it is alive by holding its lock; the OS drops the lock when the process dies,
however it dies, so whoever can take that lock knows the worker is dead (and may take its
claims over: see spool.claim). Dead workers' files are reaped once they own no claim.

In shared mode (several hosts, see spool.cluster) locks do not cross hosts: a shared worker
counts as alive while its info file exists, which it renews as a lease (see spool.lease).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from pathlib import Path

from filelock import FileLock, Timeout

from spool.faults import Backoff, Complaint, describe, is_disk_fault
from spool.fsio import list_names, write_atomic
from spool.layout import (
    DEFAULT_QUEUE,
    FILE_MODE,
    ensure_dir,
    existing_queues,
    queue_dirs,
    workers_dir,
)
from spool.lease import LeaseWatch

log = logging.getLogger(__name__)
STALE_WORKER_FILE_SECONDS = 60.0
WAITING_SUFFIX = ".waiting"  # beside <worker id>.json: outcomes wait to be written
OUTPUT_SUFFIX = ".out"  # the running attempt's output (see layout.output_scratch)
BATCH_SUFFIX = ".batch"  # the batch being run (see spool.handover)


def new_worker_id() -> str:
    """host-pid-random: unique across restarts and hosts; no '@' or '/'."""
    host = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())[:64]
    return f"{host or 'host'}-{os.getpid()}-{secrets.token_hex(3)}"


class WorkerLock:
    """The lock a worker holds while it lives, and the info file beside it."""

    def __init__(self, root: Path, worker_id: str) -> None:
        self.dir = workers_dir(root)
        self.worker_id = worker_id
        self.lock = FileLock(str(self.dir / f"{worker_id}.lock"), mode=FILE_MODE)
        self.info_path = self.dir / f"{worker_id}.json"

    def acquire(self, info: dict[str, object]) -> None:
        """Take the lock (unless held: a start-up tried again) and write the info file.

        Raises: OSError (e.g. a full disk: call again).
        """
        ensure_dir(self.dir)
        if not self.lock.is_locked:
            self.lock.acquire(timeout=10)
        self.info = dict(info)
        self.write_info()  # after the lock: see reap_dead_workers

    def update(self, **changes: object) -> None:
        """Change the info file; if the disk refuses, the change is written with the next."""
        self.info.update(changes)
        try:
            self.write_info()
        except OSError as exc:
            log.warning("cannot update the worker's info file: %s", exc)

    def write_info(self) -> None:
        write_atomic(json.dumps(self.info).encode(), self.dir, self.info_path, durable=False)

    @property
    def waiting_path(self) -> Path:
        return self.dir / f"{self.worker_id}{WAITING_SUFFIX}"

    def show_waiting(self, waiting: bool) -> None:
        """Show (or stop showing) that this worker holds outcomes the disk refused: an empty
        file, since its mtime, which a full disk still lets a worker create (no data block),
        unlike a new info file. Best effort."""
        try:
            if waiting:
                os.close(os.open(self.waiting_path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
            else:
                self.waiting_path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot mark the worker's waiting outcomes: %s", exc)

    def release_if_held(self) -> None:
        if self.lock.is_locked:
            self.release()

    def release(self) -> None:
        """Remove the info files, drop the lock. Best effort: a worker stopping on a mount that
        went away, or whose GlusterFS client reconnected after a partition (its descriptors
        from before give EBADFD), still stops cleanly; its files go with its lease."""
        try:
            self.info_path.unlink(missing_ok=True)
            self.waiting_path.unlink(missing_ok=True)
            Path(self.lock.lock_file).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the worker's info file: %s", exc)
        try:
            self.lock.release()
        except OSError as exc:
            log.warning("cannot release the worker's lock: %s", exc)


def read_info(root: Path, worker_id: str) -> dict[str, object] | None:
    """A worker's info file, or None if it is missing or unreadable."""
    try:
        info = json.loads((workers_dir(root) / f"{worker_id}.json").read_bytes())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def waiting_since(root: Path, worker_id: str) -> float | None:
    """Since when the worker holds outcomes it cannot write (see WorkerLock.show_waiting)."""
    try:
        return os.stat(workers_dir(root) / f"{worker_id}{WAITING_SUFFIX}").st_mtime
    except OSError:
        return None


def is_alive(root: Path, worker_id: str) -> bool:
    """Whether the worker lives: it holds its lock (a missing lock file means it is gone), or
    for a shared-mode worker, its info file exists (sweepers delete it when its lease ends)."""
    info = read_info(root, worker_id)
    if info is not None and info.get("shared"):
        return True
    return holds_lock(root, worker_id)


def holds_lock(root: Path, worker_id: str) -> bool:
    """Whether a process on this host holds the worker's liveness lock (True if unsure)."""
    path = workers_dir(root) / f"{worker_id}.lock"
    if not path.exists():
        return False
    probe = FileLock(str(path), mode=FILE_MODE)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return True  # cannot tell (permissions): never take a claim we are unsure of
    probe.release()
    return False


def worker_ids(root: Path) -> list[str]:
    """Ids of the workers that have an info file in .workers/, sorted."""
    return sorted(
        n.removesuffix(".json") for n in list_names(workers_dir(root)) if n.endswith(".json")
    )


def live_workers(root: Path) -> list[dict[str, object]]:
    """Info of every live worker (see is_alive)."""
    found = []
    for worker_id in worker_ids(root):
        if not is_alive(root, worker_id):
            continue
        found.append({"id": worker_id, **(read_info(root, worker_id) or {})})
    return found


def kill_orphans(root: Path, worker_id: str) -> None:
    """Kill what a dead worker's handler process left running (its process group).

    The handler process dies with its worker, but processes it started live on in its group;
    the worker's info file names that group. Only on the host the worker ran on.
    """
    try:
        info = json.loads((workers_dir(root) / f"{worker_id}.json").read_text())
        group = int(info["handler_pid"])
        same_host = info.get("host") == socket.gethostname()
    except (OSError, ValueError, KeyError, TypeError):
        return
    if same_host and group > 1:
        try:
            os.killpg(group, signal.SIGKILL)
            log.warning("killed the processes left by dead worker %s (group %d)", worker_id, group)
        except (ProcessLookupError, PermissionError):
            pass


class OrphanKills:
    """The dead workers whose leftover processes this process killed (see kill_orphans): once
    each, whether recovery finds the worker first or the reaper does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: set[str] = set()

    def kill_once(self, worker_id: str) -> None:
        if worker_id not in self.done:
            self.done.add(worker_id)
            kill_orphans(self.root, worker_id)

    def forget(self, worker_id: str) -> None:
        """The worker's files are gone: it is not met again (the set stays small)."""
        self.done.discard(worker_id)


def reap_dead_workers(root: Path, busy: set[str], now: float, orphans: OrphanKills) -> int:
    """Delete the lock and info files of dead workers that own no claim, once what their
    handler processes left is killed; return how many.

    A worker writes its info file only after it holds its lock, so a lock file without info
    that is younger than a minute may be a worker starting up and is left alone.
    """
    directory = workers_dir(root)
    reaped = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.endswith(".lock"):
            continue
        worker_id = name[: -len(".lock")]
        info = directory / f"{worker_id}.json"
        if worker_id in busy:
            continue
        about = read_info(root, worker_id)
        if about is not None and about.get("shared"):
            continue  # a lock proves nothing across hosts: reap_expired_workers decides
        try:
            young = now - os.stat(directory / name).st_mtime < STALE_WORKER_FILE_SECONDS
        except FileNotFoundError:
            continue
        if not info.exists() and young:
            continue
        probe = FileLock(str(directory / name), mode=FILE_MODE)
        try:
            probe.acquire(timeout=0)
        except (Timeout, OSError):
            continue
        try:
            orphans.kill_once(worker_id)
            orphans.forget(worker_id)
            info.unlink(missing_ok=True)
            (directory / f"{worker_id}{WAITING_SUFFIX}").unlink(missing_ok=True)
            (directory / f"{worker_id}{OUTPUT_SUFFIX}").unlink(missing_ok=True)
            (directory / f"{worker_id}{BATCH_SUFFIX}").unlink(missing_ok=True)
            (directory / name).unlink(missing_ok=True)
            reaped += 1
        finally:
            probe.release()
    return reaped


def reap_expired_workers(root: Path, busy: set[str], watch: LeaseWatch, now_mono: float) -> int:
    """Shared mode: delete the files of workers whose info file's lease ran out; how many.

    A worker on another host touches its info file while it lives (see spool.lease); one that
    was only cut off writes it again when it is back.
    """
    directory = workers_dir(root)
    reaped = 0
    seen = []
    for worker_id in worker_ids(root):
        name = f"{worker_id}.json"
        seen.append(name)
        if worker_id in busy or not watch.stat_expired(name, directory / name, now_mono):
            continue
        (directory / name).unlink(missing_ok=True)
        (directory / f"{worker_id}.lock").unlink(missing_ok=True)
        (directory / f"{worker_id}{WAITING_SUFFIX}").unlink(missing_ok=True)
        (directory / f"{worker_id}{OUTPUT_SUFFIX}").unlink(missing_ok=True)
        log.warning("worker %s stopped renewing its lease: its files are removed", worker_id)
        reaped += 1
    watch.keep_only(seen)
    return reaped


def start_on_disk(
    root: Path, fixed: list[str], lock: WorkerLock, shared: bool, stopping: threading.Event
) -> list[str] | None:
    """Make the queues' directories, take the worker's lock, write its info file: the queues
    it serves (`fixed`, else every queue there is, else the default one).

    A full or failing disk is logged once and tried again with a growing pause (a worker
    never exits for it, so Supervisor never gives up on it); None if stopped meanwhile.
    """
    backoff, complaint = Backoff(cap=10.0), Complaint()
    while True:
        try:
            os.makedirs(root, exist_ok=True)
            queues = fixed or existing_queues(root) or [DEFAULT_QUEUE]
            for queue in queues:
                queue_dirs(root, queue).create()
            lock.acquire(start_info(queues, shared, all_queues=not fixed))
            if backoff.failures:
                log.info("the disk takes writes again: starting")
            return queues
        except OSError as exc:
            if not is_disk_fault(exc):
                raise
            if complaint.due(time.time()):
                log.error(
                    "cannot start: %s; trying again until the disk takes writes", describe(exc)
                )
            if stopping.wait(backoff.next_pause()):
                lock.release_if_held()
                return None


def start_info(queues: list[str], shared: bool, all_queues: bool) -> dict[str, object]:
    """The worker's info file at start: who it is (pid, host), since when, what it serves
    (`all_queues`: also the queues made after it started)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": time.time(),
        "queues": queues,
        "all_queues": all_queues,
        **({"shared": True} if shared else {}),
    }
