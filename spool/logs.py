"""Logging set-up for long-running commands: one line per record on stderr, text or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)s [%(process)d] %(name)s: %(message)s",
            "%Y-%m-%dT%H:%M:%S",
        )
        self.converter = time.gmtime
        self.second = -1  # the second whose text is cached (a worker logs many lines a second)
        self.second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self.second:
            self.second_text = time.strftime(self.datefmt or "", self.converter(second))
            self.second = second
        return self.second_text


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Send spool's log records to stderr (unbuffered: a handler flushes every record)."""
    # (per record: no caller lookup, thread or multiprocessing names; none is in a line)
    logging._srcfile = None  # (documented in logging's "Optimization" section)
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("spool")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
