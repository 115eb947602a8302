"""huey with FileStorage (`BENCH_HUEY_KIND=file`) or SqliteStorage (`sqlite`).

Consumer: `huey_consumer bench.peer_tasks.huey_app.huey -w 2 -k process ...` with
$BENCH_PEER_DIR holding the storage. Results off (`results=False`); storage defaults otherwise
(FileStorage does not fsync; SqliteStorage uses WAL with its default `fsync=None`).
"""

from __future__ import annotations

import os
from typing import Any

from huey import FileHuey, SqliteHuey

from bench import peer_tasks


def make_huey(kind: str, folder: str) -> tuple[Any, dict[str, Any]]:
    os.makedirs(folder, exist_ok=True)
    if kind == "file":
        huey: Any = FileHuey("bench", path=os.path.join(folder, "huey-files"), results=False)
    else:
        huey = SqliteHuey("bench", filename=os.path.join(folder, "huey.db"), results=False)
    handlers = (peer_tasks.noop, peer_tasks.stamp, peer_tasks.sleep5)
    return huey, {f.__name__: huey.task()(f) for f in handlers}


huey, tasks = make_huey(
    os.environ.get("BENCH_HUEY_KIND", "file"), os.environ.get("BENCH_PEER_DIR", "var/huey")
)
