"""Unique keys: at most one pending task per key and queue.

A key file in <queue>/.unique/ (named by a hash of the key), created with O_EXCL, names the task
that holds the key: its id and its name in incoming/. The task holds it from before its file is
written (see spool.producer) until it ends for good (see spool.conclude); a retry or a lost
attempt keeps it. A key whose owner is nowhere (a crash between the key and the task file, or
before the release) is taken over under a lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spool.fsio import list_names, server_now, write_file
from spool.layout import QueueDirs

STALE_KEY_SECONDS = 2.0
KEY_REREAD_SECONDS = 0.05


def unique_key_path(dirs: QueueDirs, key: str) -> Path:
    return dirs.unique / hashlib.sha256(key.encode()).hexdigest()[:40]


def take_unique_key(dirs: QueueDirs, key: str, task_id: str, name: str) -> str | None:
    """Hold `key` for task `task_id` (`name`: its name in incoming/) and return None, or return
    the id of the task holding it."""
    path = unique_key_path(dirs, key)
    owner = {"id": task_id, "name": name, "key": key}
    data = json.dumps(owner).encode()
    try:
        write_file(path, data, durable=True)
        return None
    except FileExistsError:
        pass
    from filelock import FileLock  # (here: the CLI's start-up need not pay for it)

    with FileLock(str(path) + ".lock", timeout=10):  # (one host; across hosts, see below)
        holder = read_written_key(dirs, path)
        if holder is not None and not is_stale_key(dirs, path, holder):
            return str(holder.get("id"))
        retire_key(path, holder)
        try:
            write_file(path, data, durable=True)
        except FileExistsError:  # RACE: a producer on another host took it after us
            holder = read_key(path)
            return str(holder.get("id")) if holder is not None else None
    return None


def retire_key(path: Path, judged: Mapping[str, Any] | None) -> None:
    """Remove a stale key file by renaming it aside first: of producers on several hosts
    racing to retire it, one wins the rename; if what it moved is no longer the key judged
    stale (another producer replaced it meanwhile), it is put back."""
    aside = path.with_name(f"{path.name}.retired-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if read_key(aside) != judged:
        with contextlib.suppress(OSError):
            os.rename(aside, path)
        return
    aside.unlink(missing_ok=True)


def read_written_key(dirs: QueueDirs, path: Path) -> dict[str, Any] | None:
    """The key file's holder, or None if it is gone or stays unreadable past the crash window.

    RACE: a key file that another producer has created but not yet written reads empty; on a
    network filesystem for longer (its fsync crosses the network, and this host's attribute
    cache may show the size 0 for a while). Taking it for stale ran two tasks under one key
    (seen on JuiceFS): it is read again until it is readable or older than STALE_KEY_SECONDS.
    """
    for _ in range(int(STALE_KEY_SECONDS / KEY_REREAD_SECONDS) + 20):  # bounded: clocks may lie
        holder = read_key(path)
        if holder is not None:
            return holder
        try:
            age = server_now(dirs.unique) - os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        if age > STALE_KEY_SECONDS:
            return None
        time.sleep(KEY_REREAD_SECONDS)
    return None


def read_key(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def is_stale_key(dirs: QueueDirs, path: Path, holder: Mapping[str, Any]) -> bool:
    """Whether the key's owning task has ended or exists nowhere."""
    task_id, name = str(holder.get("id")), str(holder.get("name"))
    if (dirs.done / f"{task_id}.json").exists() or (dirs.failed / f"{task_id}.json").exists():
        return True
    if (dirs.incoming / name).exists():
        return False
    if any(entry.startswith(name + "@") for entry in list_names(dirs.processing)):
        return False
    if any(entry.endswith("@" + name) for entry in list_names(dirs.delayed)):
        return False
    try:
        age = server_now(dirs.unique) - os.stat(path).st_mtime  # one clock, also across hosts
    except FileNotFoundError:
        return True
    return age > STALE_KEY_SECONDS  # CRASH: the owner's file may still be on its way


def release_unique_key(dirs: QueueDirs, key: str, task_id: str) -> None:
    """Drop `key` if this task holds it (called when the task ends for good)."""
    path = unique_key_path(dirs, key)
    holder = read_key(path)
    if holder is not None and holder.get("id") == task_id:
        path.unlink(missing_ok=True)
