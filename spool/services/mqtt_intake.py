"""`spool mqtt-intake`: tasks published to an MQTT topic become task files.

The intake subscribes with QoS 1 in a persistent session (a fixed client id, clean_session
off), so the broker keeps what arrives while it is down, and acknowledges each message itself
(paho's manual acks) only once its task file is durable: a message the broker handed over and
the intake did not acknowledge is handed over again after a crash. Messages are written in
small batches (what arrived together: one filesystem sync for all, as `enqueue_many` does) and
then acknowledged in order.

Each message is a task exactly as a task file is (the same validation); its queue is the topic
level in place of {queue} (`spool/enqueue/{queue}` subscribes to `spool/enqueue/+`). A message
that is not a valid task (not UTF-8, bad JSON, not an object, a wrong field, an invalid queue
name, too big) is kept in the queue's failed/ (or `invalid_queue`'s, when the queue name is the
problem) as it came, with `<name>.error.json` beside it giving the reason and the topic, as a
rejected file is (see conclude.keep_rejected: the same note, the same `rejected` counter); it is
acknowledged too and never stops the intake.

Redelivery: a message redelivered after its task was written (a crash between the write and
the acknowledgement) is written again, unless it carries an `id` and a task with that id is
already in its queue; give messages ids to make the intake exactly-once.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spool import envelope, producer, stats
from spool.conclude import Rejection, keep_rejected
from spool.config import Settings
from spool.envelope import FieldError
from spool.errors import InvalidQueueName, InvalidTask
from spool.fsio import write_atomic
from spool.layout import DEFAULT_QUEUE, queue_dirs
from spool.lookup import locate
from spool.manifest import Catalog, CatalogCache
from spool.notify_config import IntakeSettings
from spool.services.runner import Resident
from spool.services.sinks import KEEPALIVE_SECONDS, close_client, new_client
from spool.stats import WorkerStats

log = logging.getLogger("spool.mqtt_intake")  # the name operators filter on
IDLE_SECONDS = 2.0
BACKOFF_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10.0
MAX_BATCH = 1000


@dataclass
class Received:
    """One message, held until its task file is durable."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    dup: bool


@dataclass
class Verdict:
    """What to do with a message: write `prepared`, reject with `reason`, or skip (a copy)."""

    message: Received
    prepared: producer.Prepared | None = None
    reason: str = ""
    queue: str = ""


def judge(
    settings: Settings, intake: IntakeSettings, message: Received, now: float, catalog: Catalog
) -> Verdict:
    """Validate a message as a task for the queue its topic names (else the queue its handler
    declares); an unknown task name or arguments that do not bind are rejected."""
    named = intake.queue_of(message.topic)
    try:
        home = DEFAULT_QUEUE if named is None else queue_dirs(settings.root, named).name
    except InvalidQueueName as exc:
        return Verdict(message, reason=str(exc), queue=intake.invalid_queue)
    if len(message.payload) > settings.max_file_bytes:
        reason = f"is {len(message.payload)} bytes, over the limit of {settings.max_file_bytes}"
        return Verdict(message, reason=reason, queue=home)
    try:
        task = envelope.parse_task_bytes(message.payload)
        admitted = producer.admit(catalog, task, named, check=True)
        prepared = producer.prepare(settings, admitted, named, now)
    except (FieldError, InvalidTask, InvalidQueueName) as exc:
        return Verdict(message, reason=str(exc), queue=home)
    queue = prepared.dirs.name
    if message.dup and "id" in task and locate(settings.root, task["id"], [queue]):
        return Verdict(message, queue=queue)  # redelivered after it was written: a copy
    return Verdict(message, prepared=prepared, queue=queue)


def write_batch(settings: Settings, verdicts: list[Verdict]) -> None:
    """Make every task and rejection of the batch durable. Raises: OSError."""
    rejected = [verdict for verdict in verdicts if verdict.prepared is None and verdict.reason]
    if rejected:
        counts = stats.command_stats(settings.root)
        for verdict in rejected:
            store_rejected(settings, verdict, counts)
        counts.flush(0.0, force=True)
    # a task whose unique_key a pending task holds is not written, as with enqueue
    producer.write_batch(settings, [v.prepared for v in verdicts if v.prepared is not None])


def store_rejected(settings: Settings, verdict: Verdict, counts: WorkerStats) -> Path:
    """Keep a message that is not a task in failed/, as it came, with the reason beside it
    (see conclude.keep_rejected)."""
    dirs = queue_dirs(settings.root, verdict.queue).create()
    now = time.time()
    name = f"mqtt-{envelope.format_compact(now)}-{secrets.token_hex(4)}.json"
    topic = verdict.message.topic
    rejection = Rejection(name, verdict.reason, "mqtt-intake", now, {"topic": topic})

    def write(dest: Path) -> None:
        write_atomic(verdict.message.payload, dirs.tmp, dest)

    dest = keep_rejected(dirs, rejection, name, write, counts)
    log.warning("rejected message topic=%s stored=%s/failed/%s reason=%s",
                topic, dirs.name, dest.name, verdict.reason)  # fmt: skip
    return dest


class Intake(Resident):
    """The resident subscriber; idle while the config has no [mqtt_intake]."""

    keeps, logger = "the current one", log.name

    def __init__(self, settings: Settings, reload: Callable[[], Settings]) -> None:
        super().__init__(settings, reload)
        self.pending: list[Received] = []
        self.failures = 0
        self.written = 0
        self.catalogs = CatalogCache(settings.root)

    def run(self) -> int:
        self.start()
        if self.settings.mqtt_intake is None:
            log.info("mqtt intake: no [mqtt_intake] in the config; idle until it has one")
        try:
            while not self.stopped.is_set():
                self.wakeup.clear()
                intake = self.settings.mqtt_intake
                if intake is None:
                    self.wakeup.wait(IDLE_SECONDS)
                else:
                    self.session(intake)
                self.reload_if_asked()
        finally:
            self.finish()
        log.info("mqtt intake stopped")
        return 0

    def session(self, intake: IntakeSettings) -> None:
        """Connect, subscribe and write what arrives, until stopped, reloaded or cut off."""
        try:
            client = self.connect(intake)
        except (OSError, ConnectionError, ValueError) as exc:
            self.failures += 1
            delay = min(BACKOFF_MAX_SECONDS, BACKOFF_SECONDS * 2.0 ** min(self.failures - 1, 30))
            log.warning("mqtt intake: cannot connect to %s:%d (%s); again in %.1f s",
                        intake.broker.host, intake.broker.port, exc, delay)  # fmt: skip
            self.stopped.wait(delay)
            return
        next_check = time.monotonic() + IDLE_SECONDS
        try:
            while not self.stopped.is_set() and not self.reload_requested:
                if client.loop(0.05) != 0:
                    log.warning("mqtt intake: connection lost; reconnecting")
                    return
                self.drain(client)
                if self.pending:
                    self.flush(client, intake)
                    self.failures = 0
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + IDLE_SECONDS
                    if self.config_changed():
                        return
        finally:
            self.pending.clear()  # not acknowledged: the broker hands them over again
            close_client(client)

    def drain(self, client: Any) -> None:
        """Read what has already arrived, so a batch takes it all (up to MAX_BATCH)."""
        while len(self.pending) < MAX_BATCH:
            before = len(self.pending)
            if client.loop(0) != 0 or len(self.pending) == before:
                return

    def flush(self, client: Any, intake: IntakeSettings) -> None:
        batch, self.pending = self.pending, []
        now = time.time()
        catalog = self.catalogs.current(time.monotonic())
        verdicts = [judge(self.settings, intake, message, now, catalog) for message in batch]
        while not self.stopped.is_set():
            try:
                write_batch(self.settings, verdicts)
                break
            except OSError as exc:  # a full disk: keep the messages unacknowledged, retry
                log.error("mqtt intake: cannot write %d task(s): %s", len(verdicts), exc)
                self.stopped.wait(1.0)
        else:
            return
        # CRASH: the tasks are durable; a message not acknowledged yet is handed over again
        for message in batch:
            client.ack(message.mid, message.qos)
        self.written += len(batch)
        log.info("mqtt intake: %d message(s) enqueued (%d so far)", len(batch), self.written)

    def connect(self, intake: IntakeSettings) -> Any:
        """A client subscribed in its persistent session. Raises: OSError, ConnectionError."""
        broker = intake.broker
        client = new_client(broker, intake.client_id, persistent=True)
        answer: dict[str, Any] = {}
        client.on_connect = lambda _c, _u, _flags, code, _props: answer.update(code=code)
        client.on_subscribe = lambda _c, _u, _mid, codes, _props: answer.update(granted=codes)
        client.on_message = lambda _c, _u, msg: self.pending.append(
            Received(msg.mid, msg.qos, msg.topic, bytes(msg.payload), bool(msg.dup))
        )
        client.connect(broker.host, broker.port, keepalive=KEEPALIVE_SECONDS)
        try:
            self.await_answer(client, answer, "code")
            if answer["code"].is_failure:
                raise ConnectionError(f"refused: {answer['code']}")
            client.subscribe(intake.subscription, qos=1)
            self.await_answer(client, answer, "granted")
            if any(code.is_failure for code in answer["granted"]):
                raise ConnectionError(f"subscription to {intake.subscription} refused")
        except BaseException:
            close_client(client)
            raise
        log.info("mqtt intake: subscribed to %s on %s:%d as %s", intake.subscription,
                 broker.host, broker.port, intake.client_id)  # fmt: skip
        return client

    def await_answer(self, client: Any, answer: dict[str, Any], key: str) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
        while key not in answer:
            if client.loop(0.05) != 0 or time.monotonic() > deadline or self.stopped.is_set():
                raise ConnectionError(f"no answer from the broker ({key})")

    def apply(self, settings: Settings) -> None:
        self.settings = settings
        self.catalogs = CatalogCache(settings.root)
        log.info("config reloaded")


def run_intake(settings: Settings, reload: Callable[[], Settings]) -> int:
    """Enqueue published tasks until stopped; return the exit code."""
    return Intake(settings, reload).run()
