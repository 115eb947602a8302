"""HTTP enqueue rate of `spool web`: POST /api/tasks one task per request, and 100 per request.

    .venv/bin/python -m bench.http_enqueue [--requests 2000] [--batches 100] [--concurrency 16]
    .venv/bin/python -m bench.http_enqueue --url http://127.0.0.1:8750 --token T   # a running one

Without --url it starts `spool web` on a fresh root in a temporary directory (one uvicorn
process, as `spool web` runs) and stops it at the end. A bounded number of requests goes through
an httpx.AsyncClient with bounded concurrency; every answer must be 202. Each 202 means the
tasks are durable (fsynced), so this measures the durable intake, not a buffer.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.webserver import WebServer

TOKEN = "bench-token"


async def run(url: str, token: str, requests: int, per_request: int, concurrency: int) -> float:
    """Send `requests` POSTs of `per_request` tasks each; return the tasks per second."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=30
    ) as client:

        async def post(n: int) -> None:
            body: object = {"task": "noop", "args": [], "kwargs": {"n": n}}
            if per_request > 1:
                body = [{"task": "noop", "kwargs": {"n": n, "i": i}} for i in range(per_request)]
            async with gate:
                started = time.perf_counter()
                response = await client.post("/api/tasks", json=body)
                latencies.append(time.perf_counter() - started)
            if response.status_code != 202:
                raise RuntimeError(f"{response.status_code}: {response.text}")

        await post(-1)  # warm up: the connection, the queue directories
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(post(n) for n in range(requests)))
        elapsed = time.perf_counter() - started
    p50 = statistics.median(latencies) * 1000
    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000
    rate = requests / elapsed
    print(
        f"{per_request:>4} task(s)/request: {requests} requests in {elapsed:.2f} s = "
        f"{rate:,.0f} requests/s = {rate * per_request:,.0f} tasks/s "
        f"(latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, concurrency {concurrency})"
    )
    return rate * per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="A running spool web (default: start one on a temp root).")
    parser.add_argument("--token", default=TOKEN, help="Its token (with --url).")
    parser.add_argument("--requests", type=int, default=2000, help="Single-task requests.")
    parser.add_argument("--batches", type=int, default=100, help="Requests of 100 tasks.")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.url:
        bench(args.url, args.token, args)
        return
    with tempfile.TemporaryDirectory(prefix="spool-http-bench-") as tmp:
        root = Path(tmp) / "spool"
        root.mkdir()
        with WebServer(root, TOKEN, Path(tmp) / "web.log") as server:
            print(f"spool web on {server.url}, root {root}")
            bench(server.url, TOKEN, args)


def bench(url: str, token: str, args: argparse.Namespace) -> None:
    asyncio.run(run(url, token, args.requests, 1, args.concurrency))
    asyncio.run(run(url, token, args.batches, 100, args.concurrency))


if __name__ == "__main__":
    main()
