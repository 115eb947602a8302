"""A real full disk for tests: a small tmpfs mounted on a directory, filled and freed at will.

    disk = FullDisk(tmp_path / "spool", size="1m")
    disk.mount()            # root only; raises Unavailable (a reason to skip) otherwise
    disk.fill()             # a filler file takes every free block: writes fail with ENOSPC
    disk.free()             # the filler goes: writes work again
    disk.unmount()          # (lazily, if a process still has the mount busy)

`full_for(seconds)` fills it now and frees it after `seconds` from a thread (a chaos soak's
"a full disk for some seconds"). The directory may already hold files: they stay hidden under
the mount while it is mounted and reappear after. Creating an empty file or a directory, a
rename and an unlink still work on a full tmpfs (they take no data block); writing a byte does
not.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

FILLER = ".filler"
CHUNK = 64 * 1024


class Unavailable(Exception):
    """The mount cannot be made here (not root, no tmpfs); args[0] says why."""


class FullDisk:
    """A tmpfs of `size` (mount(8) syntax: "1m") mounted on `path`."""

    def __init__(self, path: Path, size: str = "1m") -> None:
        self.path, self.size = path, size
        self.mounted = False
        self.timers: list[threading.Timer] = []

    def mount(self) -> FullDisk:
        """Mount the tmpfs on `path` (created if missing). Raises: Unavailable."""
        if os.geteuid() != 0:
            raise Unavailable("mounting a tmpfs needs root")
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0777", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise Unavailable(f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}")
        self.mounted = True
        return self

    @property
    def filler(self) -> Path:
        return self.path / FILLER

    def fill(self) -> None:
        """Take every free data block, so the next write of a byte fails with ENOSPC."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (CHUNK, 4096, 1):
                block = b"\0" * size
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def is_full(self) -> bool:
        """Whether a one-byte write to a new file fails with ENOSPC right now."""
        probe = self.path / ".probe"
        try:
            probe.write_bytes(b"x")
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return True
            raise
        finally:
            probe.unlink(missing_ok=True)
        return False

    def free(self) -> None:
        """Give the filler's blocks back."""
        self.filler.unlink(missing_ok=True)

    def full_for(self, seconds: float) -> None:
        """Fill now and free after `seconds` (from a timer thread; unmount cancels it)."""
        self.fill()
        timer = threading.Timer(seconds, self.free)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    def unmount(self) -> None:
        """Unmount (lazily when still busy); the directory is left empty as before."""
        for timer in self.timers:
            timer.cancel()
            timer.join()
        self.timers.clear()
        if not self.mounted:
            return
        done = subprocess.run(["umount", str(self.path)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], check=True)
        self.mounted = False
