"""A real `spool web` server subprocess on a free 127.0.0.1 port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_DIR = TESTS_DIR.parent
TEST_CONFIG = TESTS_DIR / "spool.toml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class WebServer:
    """`spool web` on 127.0.0.1:<free port> with `token`; start() waits until it answers.
    As a context manager: started on entry, stopped on exit."""

    def __init__(self, root: Path, token: str | None, log: Path, config: Path = TEST_CONFIG):
        self.root, self.token, self.log, self.config = root, token, log, config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> WebServer:
        env = {**os.environ, "SPOOL_ROOT": str(self.root), "PYTHONUNBUFFERED": "1"}
        env.pop("SPOOL_WEB_TOKEN", None)
        if self.token:
            env["SPOOL_WEB_TOKEN"] = self.token
        command = [sys.executable, "-m", "spool", "--root", str(self.root)]
        command += ["--config", str(self.config), "web", "--port", str(self.port)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=PROJECT_DIR, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spool web exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/api/queues", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"spool web did not answer within {timeout} s: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
