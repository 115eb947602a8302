"""MQTT in, completion events out: `python -m bench.mqtt_roundtrip [--messages N] [--workers W]`.

Starts a Mosquitto broker (tests/mosquitto.py), `spool mqtt-intake`, `spool notify` (MQTT sink)
and W workers on a fresh root, then:

1. round trip: publishes N task messages (QoS 1) to spool/enqueue/default and waits for the N
   completion events on spool/default/done; reports messages per second from the first publish
   to the last completion received;
2. outage: stops the broker, enqueues N tasks directly, waits until the workers finished them,
   starts the broker again and reports the time from "broker up" to "every event delivered".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from spool import Spool
from spool.config import load_settings
from tests.mosquitto import Broker, mosquitto_binary
from tests.mqtt_clients import Publisher, Subscriber

PROJECT_DIR = Path(__file__).resolve().parent.parent

CONFIG = """\
tasks = ["bench.tasks"]
[defaults]
max_retries = 0
[notify]
sinks = ["mqtt"]
retry_backoff = 0.2
retry_backoff_max = 1.0
[notify.mqtt]
url = "{url}"
[mqtt_intake]
url = "{url}"
client_id = "bench-intake"
"""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt_roundtrip", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    args = parser.parse_args(argv)
    binary = mosquitto_binary()
    if binary is None:
        raise SystemExit("mosquitto is not installed")
    scratch = Path(tempfile.mkdtemp(prefix="spool-mqtt-bench-"))
    broker = Broker(scratch / "mosquitto", binary)
    broker.start()
    root, config = scratch / "spool", scratch / "spool.toml"
    config.write_text(CONFIG.format(url=broker.url))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def spool(*command: str) -> subprocess.Popen[bytes]:
        line = [sys.executable, "-m", "spool", "--root", str(root), "--config", str(config)]
        log = open(scratch / f"{command[0]}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        return subprocess.Popen([*line, *command], cwd=PROJECT_DIR, env=env, stderr=log)

    procs = [spool("mqtt-intake"), spool("notify")]
    procs += [spool("worker") for _ in range(args.workers)]
    subscriber = Subscriber(broker.url, "spool/+/done", client_id="bench-sub")
    publisher = Publisher(broker.url)
    ok = False
    try:
        time.sleep(1.0)  # let the intake subscribe and the workers start
        n = args.messages
        start = time.monotonic()
        mids = [
            publisher.publish("spool/enqueue/default", json.dumps({"task": "noop"}).encode())
            for _ in range(n)
        ]
        publisher.wait_acked(mids, timeout=120)
        wait_for(lambda: subscriber.count() >= n, 120, "completion events")
        took = time.monotonic() - start
        print(f"round trip: {n} messages in {took:.2f} s = {n / took:.0f} messages/s "
              f"({args.workers} workers)")  # fmt: skip

        app = Spool(settings=load_settings(str(root), str(config), env={}))
        broker.stop()
        app.enqueue_many([{"task": "noop"} for _ in range(n)])
        done = root / "default" / "done"
        wait_for(lambda: len(os.listdir(done)) >= 2 * n, 300, "the workers")
        broker.start()
        up = time.monotonic()
        wait_for(lambda: subscriber.count() >= 2 * n, 300, "delivery after the outage")
        lag = time.monotonic() - up
        print(f"outage: {n} events delivered {lag:.2f} s after the broker came back")
        ok = True
    finally:
        publisher.close()
        subscriber.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        broker.stop()
        if ok and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch} (logs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
