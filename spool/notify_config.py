"""The `[notify]` and `[mqtt_intake]` tables of the config: completion events and MQTT.

    [notify]
    sinks = ["mqtt", "webhook", "command"]   # each event goes to every sink named here
    events = false          # write events even with no sink (another program reads .events/)
    on_retry = false        # also an event for each failed attempt that will be retried
    retry_backoff = 0.5     # seconds before a failed delivery is tried again, doubling ...
    retry_backoff_max = 10  # ... up to this
    [notify.mqtt]     url, topic, username, password, ca_file, client_id, timeout
    [notify.webhook]  url, secret, timeout
    [notify.command]  argv, timeout

    [mqtt_intake]     url, topic, queue, client_id, username, password, ca_file, invalid_queue

Parsed here (not in config.py) so the two features keep their keys in one place; config.py
calls `parse_notify` and `parse_mqtt_intake` and stores the results in Settings.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from spool.errors import ConfigError
from spool.tables import as_table, duration, want

SINKS = ("mqtt", "webhook", "command")
NOTIFY_KEYS = {"sinks", "events", "on_retry", "retry_backoff", "retry_backoff_max", *SINKS}
MQTT_KEYS = {"url", "topic", "username", "password", "ca_file", "client_id", "timeout"}
WEBHOOK_KEYS = {"url", "secret", "timeout"}
COMMAND_KEYS = {"argv", "timeout"}
INTAKE_KEYS = {
    "url",
    "topic",
    "queue",
    "client_id",
    "username",
    "password",
    "ca_file",
    "invalid_queue",
}
TOPIC_FIELDS = {"queue", "status", "task", "id"}
DEFAULT_TOPIC = "spool/{queue}/{status}"
DEFAULT_INTAKE_TOPIC = "spool/enqueue/{queue}"


@dataclass(frozen=True)
class Broker:
    """Where an MQTT client connects, and as whom."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None


@dataclass(frozen=True)
class MqttSink:
    broker: Broker
    topic: str = DEFAULT_TOPIC
    client_id: str = ""  # empty: a fresh id per connection (the notifier's session is clean)
    timeout: float = 10.0


@dataclass(frozen=True)
class WebhookSink:
    url: str
    secret: str = field(default="", repr=False)
    timeout: float = 10.0


@dataclass(frozen=True)
class CommandSink:
    argv: tuple[str, ...]
    timeout: float = 30.0


@dataclass(frozen=True)
class NotifySettings:
    """Which events are written and where `spool notify` delivers them."""

    sinks: tuple[str, ...] = ()
    events: bool = False
    on_retry: bool = False
    retry_backoff_seconds: float = 0.5
    retry_backoff_max_seconds: float = 10.0
    mqtt: MqttSink | None = None
    webhook: WebhookSink | None = None
    command: CommandSink | None = None

    @property
    def enabled(self) -> bool:
        """Whether workers write events (some sink is configured, or `events = true`)."""
        return self.events or bool(self.sinks)


@dataclass(frozen=True)
class IntakeSettings:
    """What `spool mqtt-intake` subscribes to."""

    broker: Broker
    topic: str = DEFAULT_INTAKE_TOPIC
    queue: str | None = None  # for a topic without {queue}; None: the task's declared queue
    client_id: str = "spool-intake"
    invalid_queue: str = "default"  # where a message for an invalid queue name is kept

    @property
    def subscription(self) -> str:
        return self.topic.replace("{queue}", "+")

    def queue_of(self, topic: str) -> str | None:
        """The queue a message's topic names (its {queue} level), or the fixed queue (None:
        the queue the task's handler declares, see spool.manifest)."""
        levels = self.topic.split("/")
        if "{queue}" not in levels:
            return self.queue
        got = topic.split("/")
        position = levels.index("{queue}")
        return got[position] if len(got) == len(levels) else ""


def parse_notify(data: Any, where: str) -> NotifySettings:
    """The [notify] table as NotifySettings. Raises: ConfigError."""
    if data is None:
        return NotifySettings()
    where = f"{where} [notify]"
    table = as_table(data, NOTIFY_KEYS, where)
    sinks = table.get("sinks", [])
    if not isinstance(sinks, list) or not all(isinstance(s, str) for s in sinks):
        raise ConfigError(f"{where}: sinks must be a list of sink names")
    for sink in sinks:
        if sink not in SINKS:
            raise ConfigError(f"{where}: unknown sink {sink!r} (sinks: {', '.join(SINKS)})")
        if sink not in table:
            raise ConfigError(f"{where}: sink {sink!r} needs a [notify.{sink}] table")
    values: dict[str, Any] = {"sinks": tuple(dict.fromkeys(sinks))}
    for key in ("events", "on_retry"):
        if key in table:
            values[key] = want(table, key, bool, where)
    for key, name in (("retry_backoff", "retry_backoff_seconds"),
                      ("retry_backoff_max", "retry_backoff_max_seconds")):  # fmt: skip
        if key in table:
            values[name] = positive(table, key, where)
    if "mqtt" in table:
        values["mqtt"] = parse_mqtt_sink(table["mqtt"], f"{where[:-1]}.mqtt]")
    if "webhook" in table:
        values["webhook"] = parse_webhook(table["webhook"], f"{where[:-1]}.webhook]")
    if "command" in table:
        values["command"] = parse_command(table["command"], f"{where[:-1]}.command]")
    return NotifySettings(**values)


def parse_mqtt_sink(data: Any, where: str) -> MqttSink:
    table = as_table(data, MQTT_KEYS, where)
    topic = want(table, "topic", str, where) if "topic" in table else DEFAULT_TOPIC
    check_topic_template(topic, where)
    return MqttSink(
        broker=parse_broker(table, where),
        topic=topic,
        client_id=want(table, "client_id", str, where) if "client_id" in table else "",
        timeout=positive(table, "timeout", where) if "timeout" in table else 10.0,
    )


def parse_webhook(data: Any, where: str) -> WebhookSink:
    table = as_table(data, WEBHOOK_KEYS, where)
    url = required(table, "url", where)
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ConfigError(f"{where}: url must be an http:// or https:// URL, not {url!r}")
    return WebhookSink(
        url=url,
        secret=want(table, "secret", str, where) if "secret" in table else "",
        timeout=positive(table, "timeout", where) if "timeout" in table else 10.0,
    )


def parse_command(data: Any, where: str) -> CommandSink:
    table = as_table(data, COMMAND_KEYS, where)
    argv = table.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ConfigError(f"{where}: argv must be a non-empty list of strings (no shell)")
    return CommandSink(
        argv=tuple(argv),
        timeout=positive(table, "timeout", where) if "timeout" in table else 30.0,
    )


def parse_mqtt_intake(data: Any, where: str) -> IntakeSettings | None:
    """The [mqtt_intake] table, or None when absent. Raises: ConfigError."""
    if data is None:
        return None
    where = f"{where} [mqtt_intake]"
    table = as_table(data, INTAKE_KEYS, where)
    topic = want(table, "topic", str, where) if "topic" in table else DEFAULT_INTAKE_TOPIC
    levels = topic.split("/")
    if topic.count("{queue}") > 1 or any("{queue}" in lv and lv != "{queue}" for lv in levels):
        raise ConfigError(f"{where}: topic may hold {{queue}} once, as a whole level: {topic!r}")
    if "+" in levels or "#" in levels or any(c in topic.replace("{queue}", "") for c in "{}"):
        raise ConfigError(f"{where}: topic must be a plain topic, with {{queue}} for the queue")
    values: dict[str, Any] = {"broker": parse_broker(table, where), "topic": topic}
    for key in ("queue", "client_id", "invalid_queue"):
        if key in table:
            values[key] = want(table, key, str, where)
    if not values.get("client_id", "spool-intake"):
        raise ConfigError(f"{where}: client_id must not be empty (the session is kept by it)")
    from spool.layout import QUEUE_RE

    for key in ("queue", "invalid_queue"):
        if key in values and not QUEUE_RE.fullmatch(values[key]):
            raise ConfigError(f"{where}: {key}: invalid queue name {values[key]!r}")
    return IntakeSettings(**values)


def parse_broker(table: Mapping[str, Any], where: str) -> Broker:
    url = required(table, "url", where)
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"{where}: url must be mqtt://host[:port] or mqtts://..., not {url!r}")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ConfigError(f"{where}: bad port in url {url!r}") from None
    optional = {k: want(table, k, str, where) for k in ("username", "password", "ca_file")
                if k in table}  # fmt: skip
    return Broker(
        host=parts.hostname,
        port=port,
        tls=parts.scheme == "mqtts",
        username=optional.get("username") or parts.username,
        password=optional.get("password") or parts.password,
        ca_file=optional.get("ca_file"),
    )


def check_topic_template(topic: str, where: str) -> None:
    try:
        parsed = list(string.Formatter().parse(topic))
    except ValueError as exc:
        raise ConfigError(f"{where}: bad topic template {topic!r}: {exc}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TOPIC_FIELDS or spec or conversion:
            allowed = ", ".join("{" + f + "}" for f in sorted(TOPIC_FIELDS))
            raise ConfigError(f"{where}: topic may use {allowed}, not {{{name}}}")


def required(table: Mapping[str, Any], key: str, where: str) -> str:
    if key not in table:
        raise ConfigError(f"{where}: {key} is required")
    value: str = want(table, key, str, where)
    return value


def positive(table: Mapping[str, Any], key: str, where: str) -> float:
    """A time span above zero: a number of seconds or "90s", "5m", "1h"."""
    value = duration(table, key, where)
    if value <= 0:
        raise ConfigError(f"{where}: {key} must be more than 0 s, not {table[key]!r}")
    return value
