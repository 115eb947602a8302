"""Example tasks served by `spool up` on conf/spool.toml.

Try them:
    spool enqueue send_email a@b.c --kwargs '{"subject": "hi"}'
    spool enqueue close_unpaid_order 42 --delay 1800
    spool enqueue build_report 2026-11 && spool wait <id>
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import spool
from spool import Spool

app = Spool.from_config()
OUTBOX = Path("var/outbox")


@app.task()
def echo(x: object) -> object:
    """Return the argument: the smallest possible task."""
    return x


@app.task(queue="mail", max_retries=5, timeout=30)
def send_email(to: str, subject: str = "", body: str = "") -> str:
    """'Send' a mail by writing it to var/outbox/ (one JSON file per mail)."""
    if "@" not in to:
        raise spool.Fail(f"not an e-mail address: {to!r}")  # no retry would help
    OUTBOX.mkdir(parents=True, exist_ok=True)
    path = OUTBOX / f"{time.time_ns()}.json"
    path.write_text(json.dumps({"to": to, "subject": subject, "body": body}))
    return str(path)


@app.task()
def close_unpaid_order(order_id: int) -> dict[str, object]:
    """Close an order nobody paid for; enqueue it with a delay when the order is made."""
    return {"order": order_id, "status": "closed", "closed_at": time.time()}


@app.task(timeout=60)
def build_report(month: str, seconds: float = 3.0) -> dict[str, object]:
    """A slow task: pretend to crunch numbers for a few seconds, saying how far it got."""
    steps = 10
    for step in range(steps):
        time.sleep(seconds / steps)
        spool.progress(step + 1, steps, message=f"month {month}")
    print(f"report for {month} built")  # kept beside the task: spool logs ID
    return {"month": month, "rows": 1234, "took_seconds": seconds}


@app.task()
def cleanup() -> int:
    """Delete mails older than a day from var/outbox/; return how many."""
    cutoff = time.time() - 86400
    removed = 0
    for path in OUTBOX.glob("*.json"):
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
