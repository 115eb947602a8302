"""What every resident service shares: how it stops and how it takes a new config.

A service (the scheduler, the notifier, the MQTT intake) is a `Resident`: its loop runs while
`stopped` is not set and sleeps on `wakeup`. SIGTERM and SIGINT set `stopped` (and wake the
loop); SIGHUP, or a change of the config file (a watchdog observer wakes the loop; the file's
stamp is compared as well, for filesystems without events), asks for a reload. The loop calls
`reload_if_asked()` between two passes: it waits for the file to settle, loads the settings and
hands them to the service's `apply`, which takes them or refuses with a ConfigError; either way
one log line says so, and a refused config leaves the service as it was.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from spool import signals
from spool.config import Settings, config_stamp
from spool.errors import ConfigError

log = logging.getLogger("spool.services")

SETTLE_SECONDS = 0.1  # a config file must stay unchanged this long before it is reloaded
SETTLE_MAX_SECONDS = 2.0


class Resident:
    """The life cycle of one resident service; subclasses write `run` and `apply`."""

    keeps = "the current config"  # what a refused reload leaves in place, for the log line
    logger = "spool.services"  # the service's own logger, for its reload lines

    def __init__(self, settings: Settings, reload: Callable[[], Settings]) -> None:
        self.settings, self.load_settings = settings, reload
        self.wakeup = threading.Event()
        self.stopped = threading.Event()
        self.reload_requested = False
        self.config_stamp = config_stamp(settings)
        self.observer: Any = None

    def start(self) -> None:
        """Take the signals and watch the config file; pair with `finish`."""
        signals.install(self.on_stop, self.on_hup)
        self.observer = watch_file(self.settings, self.on_config_event)

    def finish(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopped.set()
        self.wakeup.set()

    def on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wakeup.set()

    def on_config_event(self) -> None:
        self.reload_requested = True
        self.wakeup.set()

    def config_changed(self) -> bool:
        return self.reload_requested or config_stamp(self.settings) != self.config_stamp

    def reload_if_asked(self) -> bool:
        """Load and apply the config if asked to (or it changed); whether it was applied."""
        if not self.config_changed():
            return False
        self.wait_until_config_settles()
        self.reload_requested = False
        self.config_stamp = config_stamp(self.settings)
        try:
            self.apply(self.load_settings())
        except ConfigError as exc:
            logging.getLogger(self.logger).error(
                "config not reloaded, keeping %s: %s", self.keeps, exc
            )
            return False
        return True

    def apply(self, settings: Settings) -> None:
        """Take new settings (raise ConfigError to refuse them and keep the current ones)."""
        self.settings = settings

    def wait_until_config_settles(self) -> None:
        """Let a writer finish: an editor's in-place save is seen first as an empty file, which
        would load as a valid config with nothing in it."""
        path = self.settings.config_path
        if path is None:
            return
        deadline = time.monotonic() + SETTLE_MAX_SECONDS
        previous: tuple[int, int] | None = None
        while not self.stopped.is_set() and time.monotonic() < deadline:
            current = config_stamp(self.settings)
            if current is not None and current == previous:
                return
            previous = current
            time.sleep(SETTLE_SECONDS)


def watch_file(settings: Settings, changed: Callable[[], None]) -> Any:
    """An observer calling `changed` when the config file is written or replaced; None
    without a config file or where its directory cannot be watched (the stamp still works)."""
    path = settings.config_path
    if path is None:
        return None
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    target = os.path.abspath(path)

    class ConfigChanged(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", ""))}
            if target in paths and event.event_type in ("modified", "created", "moved", "closed"):
                changed()

    observer = Observer()
    try:
        observer.schedule(ConfigChanged(), os.path.dirname(target), recursive=False)
        observer.daemon = True
        observer.start()
    except OSError as exc:
        log.warning("not watching %s for changes (%s); send SIGHUP to reload", path, exc)
        return None
    return observer
