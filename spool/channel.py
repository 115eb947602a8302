"""The pipe between a worker and its handler process: length-framed messages, JSON inside
(nothing is pickled)."""

from __future__ import annotations

import contextlib
import os
import select
import struct
import threading

HEADER = struct.Struct("!I")
READ_BYTES = 64 * 1024  # read at most this at once: several replies of a batch in one read


class Channel:
    """Length-framed messages over a pair of pipe ends (JSON inside; nothing is pickled)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.poller = select.poll()
        self.poller.register(read_fd, select.POLLIN)
        self.buffer = bytearray()  # read, not yet received
        self.sending = threading.Lock()  # (the handler process sends from two threads)

    def send(self, message: bytes) -> None:
        """Raises: OSError (BrokenPipeError when the other side is gone)."""
        view = memoryview(HEADER.pack(len(message)) + message)
        with self.sending:
            while view:
                view = view[os.write(self.write_fd, view) :]

    def readable(self, timeout: float | None) -> bool:
        if self.framed() is not None:  # a whole message was read already
            return True
        return bool(self.poller.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def receive(self) -> bytes:
        """Raises: EOFError when the other side is gone."""
        while (size := self.framed()) is None:
            chunk = os.read(self.read_fd, READ_BYTES)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        end = HEADER.size + size
        message = bytes(self.buffer[HEADER.size : end])
        del self.buffer[:end]
        return message

    def framed(self) -> int | None:
        """The size of the first message in the buffer, if the whole of it is there."""
        if len(self.buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self.buffer)
        return int(size) if len(self.buffer) >= HEADER.size + size else None

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
