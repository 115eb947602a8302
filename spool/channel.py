"""The pipe between a worker and its handler process: length-framed messages, JSON inside
(nothing is pickled)."""

from __future__ import annotations

import contextlib
import os
import select
import struct

HEADER = struct.Struct("!I")


class Channel:
    """Length-framed messages over a pair of pipe ends (JSON inside; nothing is pickled)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.poller = select.poll()
        self.poller.register(read_fd, select.POLLIN)

    def send(self, message: bytes) -> None:
        """Raises: OSError (BrokenPipeError when the other side is gone)."""
        view = memoryview(HEADER.pack(len(message)) + message)
        while view:
            view = view[os.write(self.write_fd, view) :]

    def readable(self, timeout: float | None) -> bool:
        return bool(self.poller.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def receive(self) -> bytes:
        """Raises: EOFError when the other side is gone."""
        (size,) = HEADER.unpack(self.read_exactly(HEADER.size))
        return self.read_exactly(size)

    def read_exactly(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = os.read(self.read_fd, left)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
