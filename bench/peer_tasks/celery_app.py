"""Celery on kombu's `filesystem://` transport (its file broker), for `python -m bench compare`.

Workers: `celery -A bench.peer_tasks.celery_app worker --pool solo` with $BENCH_PEER_DIR as the
broker folder. Kombu's defaults are kept (polling interval 1 s of the virtual transport);
results are ignored (no result backend).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from bench import peer_tasks


def make_app(folder: str) -> tuple[Any, dict[str, Any]]:
    processed = os.path.join(folder, "processed")
    os.makedirs(processed, exist_ok=True)
    app = Celery("benchpeer", broker="filesystem://", backend=None)
    app.conf.update(
        broker_transport_options={
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": processed,
            # kombu's control messages (pidbox) go to ./control/ by default: keep them here
            "control_folder": os.path.join(folder, "control"),
            "store_processed": False,
        },
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    handlers = (peer_tasks.noop, peer_tasks.stamp, peer_tasks.sleep5)
    return app, {f.__name__: app.task(name=f"bench.{f.__name__}")(f) for f in handlers}


app, tasks = make_app(os.environ.get("BENCH_PEER_DIR", "var/celery-fs"))
