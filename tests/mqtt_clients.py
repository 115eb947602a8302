"""MQTT clients for the tests: a subscriber that records what arrives, a QoS 1 publisher."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class Subscriber:
    """Records every message on `topic` (QoS 1, persistent session: survives broker restarts)."""

    def __init__(self, url: str, topic: str = "spool/#", client_id: str = "test-sub") -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port_of(url), keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.close()
            raise AssertionError("subscriber not subscribed in time")

    def on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [event for _, event in self.messages]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """Publishes with QoS 1 and remembers which messages the broker acknowledged."""

    def __init__(self, url: str) -> None:
        self.acked: set[int] = set()  # mids
        self.client = Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        self.client.max_inflight_messages_set(100)
        self.client.on_publish = self.on_publish
        self.client.connect("127.0.0.1", port_of(url), keepalive=10)
        self.client.loop_start()
        self.lock = threading.Lock()

    def on_publish(self, client: Client, userdata: object, mid: int, *_: object) -> None:
        with self.lock:
            self.acked.add(mid)

    def publish(self, topic: str, payload: bytes) -> int:
        info = self.client.publish(topic, payload, qos=1)
        return int(info.mid)

    def wait_acked(self, mids: list[int], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if all(m in self.acked for m in mids):
                    return
            if time.monotonic() > deadline:
                raise AssertionError("publishes not acknowledged in time")
            time.sleep(0.01)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
