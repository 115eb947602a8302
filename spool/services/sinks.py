"""Where `spool notify` delivers events: an MQTT broker, a webhook, a command.

Every sink takes a run of events in order and returns how many of them, from the first, it
accepted: an MQTT broker's PUBACK, a 2xx answer, an exit status of 0. What follows the first
refusal is not accepted (and will be offered again), so a sink never sees a task's events out of
order except through a retry, and the notifier can mark each event as delivered exactly when
every sink accepted it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from spool.envelope import JSON
from spool.notify_config import Broker, CommandSink, MqttSink, NotifySettings, WebhookSink

log = logging.getLogger("spool.sinks")  # the name operators filter on
KEEPALIVE_SECONDS = 30
SIGNATURE_HEADER = "X-Spool-Signature"


@dataclass(frozen=True)
class Event:
    """An event file waiting for delivery: its name, its bytes, and what they hold."""

    name: str
    data: bytes
    fields: dict[str, JSON]


class Sink(Protocol):
    name: str
    batch: int  # how many events it takes at once (the notifier marks them sent together)

    def deliver(self, events: Sequence[Event]) -> int:
        """Offer `events` in order; return how many, from the first, were accepted."""
        ...

    def idle(self) -> None:
        """Keep a connection alive between deliveries."""
        ...

    def close(self) -> None: ...


# ---- MQTT ----------------------------------------------------------------------------------


def topic_for(template: str, fields: dict[str, JSON]) -> str:
    """The topic of an event; wildcard characters in its values become '_'."""

    def clean(value: JSON) -> str:
        return str(value).replace("+", "_").replace("#", "_")

    return template.format(**{k: clean(fields.get(k)) for k in ("queue", "status", "task", "id")})


class MqttPublisher:
    """Publishes events with QoS 1 and counts one as accepted when its PUBACK arrives.

    A connection serves until something fails; then it is dropped, and the next delivery opens
    a new one with a clean session, so the client library never re-sends on its own: what was not
    acknowledged is offered again by the notifier, in order.
    """

    name = "mqtt"
    batch = 256  # published together, acknowledged one by one

    def __init__(self, config: MqttSink) -> None:
        self.config = config
        self.client: Any = None

    def connect(self) -> Any:
        """Raises: OSError, ConnectionError."""
        broker = self.config.broker
        client_id = self.config.client_id or f"spool-notify-{os.getpid()}-{secrets.token_hex(3)}"
        client = new_client(broker, client_id, persistent=False)
        client.max_inflight_messages_set(1000)
        answer: dict[str, Any] = {}
        client.on_connect = lambda _c, _u, _flags, code, _props: answer.update(code=code)
        client.connect(broker.host, broker.port, keepalive=KEEPALIVE_SECONDS)
        deadline = time.monotonic() + self.config.timeout
        while "code" not in answer:
            if client.loop(0.05) != 0 or time.monotonic() > deadline:
                close_client(client)
                raise ConnectionError("no answer to CONNECT")
        if answer["code"].is_failure:
            close_client(client)
            raise ConnectionError(f"refused: {answer['code']}")
        log.info("mqtt: connected to %s:%d", broker.host, broker.port)
        return client

    def deliver(self, events: Sequence[Event]) -> int:
        if self.client is None:
            try:
                self.client = self.connect()
            except (OSError, ConnectionError, ValueError) as exc:
                log.warning("mqtt: cannot connect to %s:%d: %s", self.config.broker.host,
                            self.config.broker.port, exc)  # fmt: skip
                return 0
        client = self.client
        infos = [
            client.publish(topic_for(self.config.topic, e.fields), e.data, qos=1) for e in events
        ]
        deadline = time.monotonic() + self.config.timeout
        healthy = True
        while not all(acked(info) for info in infos):
            if client.loop(0.05) != 0 or time.monotonic() > deadline:
                healthy = False
                break
        accepted = 0
        for info in infos:
            if not acked(info):
                break
            accepted += 1
        if not healthy or accepted < len(events):
            log.warning("mqtt: %d of %d event(s) not acknowledged; reconnecting",
                        len(events) - accepted, len(events))  # fmt: skip
            self.close()
        return accepted

    def idle(self) -> None:
        if self.client is not None and self.client.loop(0) != 0:
            self.close()

    def close(self) -> None:
        if self.client is not None:
            close_client(self.client)
            self.client = None


def new_client(broker: Broker, client_id: str, *, persistent: bool) -> Any:
    """A paho MQTT 3.1.1 client for `broker` (credentials, TLS), not connected yet.

    `persistent`: the broker keeps the session while the client is away, and messages are
    acknowledged by the caller (`client.ack`), not on receipt.
    """
    from paho.mqtt.client import Client, MQTTv311
    from paho.mqtt.enums import CallbackAPIVersion

    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=MQTTv311,
        reconnect_on_failure=False,
        manual_ack=persistent,
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file, cert_reqs=ssl.CERT_REQUIRED)
    return client


def acked(info: Any) -> bool:
    try:
        return bool(info.is_published())
    except (ValueError, RuntimeError):  # never queued, or failed: not acknowledged
        return False


def close_client(client: Any) -> None:
    """Say goodbye if the connection still works, and close its sockets in any case."""
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        client.disconnect()
    reset = getattr(client, "_reset_sockets", None)  # (paho has no public way to close them)
    if reset is not None:
        with contextlib.suppress(OSError):
            reset()


# ---- webhook -------------------------------------------------------------------------------


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer that is not 2xx (a POST must not silently turn into a GET)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def signature(secret: str, body: bytes) -> str:
    """The X-Spool-Signature value: sha256=<hex HMAC-SHA256 of the body with the secret>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class OneAtATime:
    """A sink that takes events one by one (`send`), stopping at the first it refuses."""

    def send(self, event: Event) -> bool:
        raise NotImplementedError

    def deliver(self, events: Sequence[Event]) -> int:
        for done, event in enumerate(events):
            if not self.send(event):
                return done
        return len(events)

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass


class WebhookPoster(OneAtATime):
    """POSTs each event's JSON; a 2xx answer accepts it, anything else refuses it."""

    name = "webhook"
    batch = 1  # one request at a time: each is marked sent at once

    def __init__(self, config: WebhookSink) -> None:
        self.config = config
        self.opener = urllib.request.build_opener(NoRedirects())

    def send(self, event: Event) -> bool:
        headers = {"Content-Type": "application/json", "User-Agent": "spool-notify"}
        if self.config.secret:
            headers[SIGNATURE_HEADER] = signature(self.config.secret, event.data)
        request = urllib.request.Request(self.config.url, event.data, headers, method="POST")
        try:
            with self.opener.open(request, timeout=self.config.timeout) as answer:
                answer.read()
                return 200 <= int(answer.status) < 300
        except urllib.error.HTTPError as exc:
            log.warning("webhook: %s answered %d for %s", self.config.url, exc.code, event.name)
            return False
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("webhook: cannot post to %s: %s", self.config.url, exc)
            return False


# ---- command -------------------------------------------------------------------------------


class CommandRunner(OneAtATime):
    """Runs a program per event with the event's JSON on stdin; exit status 0 accepts it."""

    name = "command"
    batch = 1

    def __init__(self, config: CommandSink) -> None:
        self.config = config

    def send(self, event: Event) -> bool:
        try:
            done = subprocess.run(
                list(self.config.argv),
                input=event.data,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=self.config.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning("command: %s ran over %g s for %s", self.config.argv[0],
                        self.config.timeout, event.name)  # fmt: skip
            return False
        except OSError as exc:
            log.warning("command: cannot run %s: %s", self.config.argv[0], exc)
            return False
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip()[-200:]
            log.warning("command: %s exited %d for %s: %s", self.config.argv[0],
                        done.returncode, event.name, tail)  # fmt: skip
        return done.returncode == 0


def make_sinks(notify: NotifySettings) -> list[Sink]:
    """The configured sinks, in the order of `sinks`."""
    made: list[Sink] = []
    for name in notify.sinks:
        if name == "mqtt" and notify.mqtt is not None:
            made.append(MqttPublisher(notify.mqtt))
        elif name == "webhook" and notify.webhook is not None:
            made.append(WebhookPoster(notify.webhook))
        elif name == "command" and notify.command is not None:
            made.append(CommandRunner(notify.command))
    return made
