"""File primitives: atomic durable writes, directory fsync, no-follow reads.

A file spool writes appears complete or not at all: it is written under a dot-name in tmp/
(same filesystem), made durable, then renamed into place, then the directory is fsynced.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spool.layout import FILE_MODE

_libc: Any = None


def fsync_dir(path: Path) -> None:
    """Make the names in directory `path` durable (renames and creations into it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush every dirty file of the filesystem holding `path` (syncfs; sync where missing)."""
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    syncfs = getattr(_libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


class _TmpNames:
    """Unique temporary names: this process's pid and a random tag, then a counter."""

    def __init__(self) -> None:
        self.prefix = ""  # made at first use, and again in a forked child
        self.counter = itertools.count()
        os.register_at_fork(after_in_child=self.forget)

    def forget(self) -> None:
        self.prefix = ""

    def next(self, name: str) -> str:
        if not self.prefix:
            self.prefix = f"{os.getpid()}.{secrets.token_hex(3)}"
        return f".{name}.{self.prefix}.{next(self.counter)}"


_names = _TmpNames()


def tmp_path(tmp_dir: Path, name: str) -> Path:
    return tmp_dir / _names.next(name)


def write_file(path: Path, data: bytes, *, durable: bool) -> None:
    """Create `path` exclusively with group access and `data`; fsync when durable.

    Raises: FileExistsError if `path` exists, also where a network filesystem reports the
    lost O_EXCL race as EPERM (sshfs does); OSError (then `path` does not exist).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except PermissionError:
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        raise
    try:
        os.fchmod(fd, FILE_MODE)  # the umask must not narrow group access
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            # fsync, not fdatasync: on ext4 a new file's fdatasync was measured ~30% slower
            # per enqueue (same journal commit, more waiting); see bench/RESULTS.md
            os.fsync(fd)
    except BaseException:  # e.g. a full disk: no partial file is left (it was ours: O_EXCL)
        with contextlib.suppress(OSError):
            os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def write_atomic(data: bytes, tmp_dir: Path, dest: Path, *, durable: bool = True) -> None:
    """Make `dest` appear complete or not at all, and durable once this returns if asked."""
    tmp = tmp_path(tmp_dir, dest.name)
    try:
        write_file(tmp, data, durable=durable)
        os.rename(tmp, dest)  # CRASH: before this line the file does not exist; after, it does
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(dest.parent)


def move_durably(src: Path, dest: Path) -> None:
    """Rename a file written without a sync into place, its data and its new name durable."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(src, dest)
    fsync_dir(dest.parent)


def write_many_atomic(items: Iterable[tuple[bytes, Path]], tmp_dir: Path) -> int:
    """Write many files atomically with one filesystem sync and one fsync per directory.

    Every destination exists, complete and durable, when this returns; none is visible
    before its data is on disk. Returns how many were written.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for data, dest in items:
            tmp = tmp_path(tmp_dir, dest.name)
            staged.append((tmp, dest))
            write_file(tmp, data, durable=False)
        if not staged:
            return 0
        sync_filesystem(tmp_dir)  # CRASH: data durable, nothing visible yet
        dirs: set[Path] = set()
        for tmp, dest in staged:
            os.rename(tmp, dest)
            dirs.add(dest.parent)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for directory in dirs:
        fsync_dir(directory)
    return len(staged)


class UnreadableFile(Exception):
    """A file that is not a regular, single-linked, small enough file; args[0] says why."""


def read_regular(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """Read a regular file without following a symlink, refusing what a task file must not be.

    Raises: UnreadableFile (with the reason), FileNotFoundError (it is gone).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableFile("is a symlink (symlinks are never followed)") from None
        if exc.errno == errno.ENOENT:
            raise
        raise UnreadableFile(f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(f"is not a regular file ({file_kind(st.st_mode)})")
        if st.st_nlink > 1:
            raise UnreadableFile(f"has {st.st_nlink} hard links (a task file must have one)")
        if st.st_size > max_bytes:
            raise UnreadableFile(f"is {st.st_size} bytes, over the limit of {max_bytes}")
        data = os.read(fd, max_bytes + 1)
        while len(data) <= max_bytes:
            more = os.read(fd, max_bytes + 1 - len(data))
            if not more:
                break
            data += more
        if len(data) > max_bytes:
            raise UnreadableFile(f"grew over the limit of {max_bytes} bytes while read")
        return data, st
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    for test, name in [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
    ]:
        if test(mode):
            return name
    return "unknown kind"


def list_names(directory: Path) -> list[str]:
    """Entry names of `directory` (no stat per entry); [] if it does not exist."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def server_now(directory: Path) -> float:
    """The time on the clock that stamps new files in `directory` (a network filesystem's
    server's clock; the local clock on a local disk)."""
    probe = directory / f".now-{os.getpid()}-{threading.get_ident()}"  # a dot-name: ignored
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, b"-")
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError:
        return time.time()
