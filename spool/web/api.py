"""The JSON API of `spool web`: enqueue over HTTP, look at tasks and queues, act on them.

Rules every endpoint keeps:
- A request that changes anything carries `Authorization: Bearer <token>` (SPOOL_WEB_TOKEN or
  [web] token), compared in constant time. With no token configured such requests are refused
  (403): reading works, changing needs a token. No cookies are set or read.
- Bodies are JSON, at most [web] max_body bytes (413 beyond). Errors are {"error": "..."} with
  a 4xx code; ids and queue names are checked before they touch a path (spool.web.requests
  holds these checks and the state every handler shares).
- POST /api/tasks validates like a dropped file or `app.enqueue` (the producer's code) and
  answers 202 only once the task files are durable (lists go through the bulk durable path);
  507 when the disk is full, over quota or failing (nothing of the request is written).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spool import manage, producer
from spool.config import parse_duration
from spool.errors import (
    BatchExists,
    BatchNotFound,
    DiskFault,
    InvalidQueueName,
    InvalidTask,
    Refused,
    SpoolError,
    TaskNotFound,
)
from spool.events import outbox_for
from spool.inspect.failures import Failures, group_failures
from spool.inspect.paging import task_page
from spool.lookup import locate, read_found
from spool.web.overview import overview
from spool.web.requests import (
    WebState,
    fail,
    page_query,
    parse_json,
    queue_of,
    read_body,
    require_token,
    task_id_of,
    web_state,
)
from spool.workflows import batches

NO_MANIFEST = (
    "no worker has published its tasks yet: the task was not checked, and without a queue "
    "it went to its own 'queue' field or 'default'"
)


ENQUEUE_ERRORS = (InvalidTask, InvalidQueueName, BatchExists, OSError)  # DiskFault is an OSError


def enqueue_error(exc: Exception) -> HTTPException:
    """The HTTP error for a failed enqueue of a task, a list or a batch (one of ENQUEUE_ERRORS)."""
    if isinstance(exc, Refused):  # a valid task the published tasks refuse
        return fail(422, str(exc))
    if isinstance(exc, BatchExists):
        return fail(409, str(exc))
    if isinstance(exc, (InvalidTask, InvalidQueueName)):
        return fail(400, str(exc))
    if isinstance(exc, DiskFault):  # full, over quota, failing: nothing was written; try later
        return fail(507, f"{exc}.")
    assert isinstance(exc, OSError)
    return fail(503, f"cannot write to the spool: {exc.strerror or exc}")


# ---- endpoints ---------------------------------------------------------------------------


async def post_tasks(request: Request) -> Response:
    require_token(request)
    data = parse_json(await read_body(request))
    state = web_state(request)
    settings = state.settings
    queue = request.query_params.get("queue") or None
    check = request.query_params.get("check", "true").lower() not in ("false", "0", "no")
    catalog = await run_in_threadpool(state.catalog)
    extra = {} if catalog.exists or not check else {"warning": NO_MANIFEST}
    try:
        if isinstance(data, dict):
            task_id = await run_in_threadpool(
                partial(producer.enqueue, catalog=catalog, check=check), settings, data, queue
            )
            return JSONResponse({"id": task_id, "ids": [task_id], **extra}, status_code=202)
        if not isinstance(data, list) or not data:
            raise fail(400, "body must be a task object or a non-empty list of task objects")
        for position, item in enumerate(data, 1):
            if not isinstance(item, dict):
                raise fail(400, f"task {position}: must be a JSON object")
        ids = await run_in_threadpool(
            partial(producer.enqueue_many, catalog=catalog, check=check), settings, data, queue
        )
        return JSONResponse({"ids": ids, **extra}, status_code=202)
    except ENQUEUE_ERRORS as exc:
        raise enqueue_error(exc) from None


async def post_batches(request: Request) -> Response:
    """A batch: {"tasks": [...], "then", "on_failure", "finally": a task object or a list,
    "id": a name (optional)} -> 202 {"id", "ids"} (see workflows.batches)."""
    require_token(request)
    data = parse_json(await read_body(request))
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise fail(400, 'body must be an object with "tasks": a list of task objects')
    unknown = sorted(set(data) - {"tasks", "then", "on_failure", "finally", "id"})
    if unknown:
        raise fail(400, f"unknown field {unknown[0]!r}")
    if not all(isinstance(t, dict) for t in data["tasks"]):
        raise fail(400, "tasks: each must be a JSON object")
    callbacks = {
        key: [value] if isinstance(value, dict) else value
        for key in ("then", "on_failure", "finally")
        if (value := data.get(key)) is not None
    }
    batch_id = data.get("id")
    if batch_id is not None and not isinstance(batch_id, str):
        raise fail(400, "id must be a string")
    state = web_state(request)
    catalog = await run_in_threadpool(state.catalog)
    make = partial(batches.enqueue_batch, catalog=catalog, check=True)
    try:
        made, ids = await run_in_threadpool(
            make, state.settings, data["tasks"], callbacks, batch_id
        )
    except ENQUEUE_ERRORS as exc:
        raise enqueue_error(exc) from None
    return JSONResponse({"id": made, "ids": ids}, status_code=202)


async def get_batch(request: Request) -> Response:
    batch_id = str(request.path_params["batch_id"])
    try:
        progress = await run_in_threadpool(
            batches.summary, web_state(request).settings.root, batch_id
        )
    except BatchNotFound as exc:
        raise fail(404, str(exc)) from None
    return JSONResponse(progress.to_json())


async def get_task(request: Request) -> Response:
    task_id = task_id_of(request)
    root = web_state(request).settings.root
    found = await run_in_threadpool(locate, root, task_id)
    if found is None:
        raise fail(404, f"unknown task id: {task_id}")
    return JSONResponse(await run_in_threadpool(read_found, found))


async def retry_task(request: Request) -> Response:
    require_token(request)
    task_id = task_id_of(request)
    queue = await act(manage.retry, web_state(request), task_id)
    return JSONResponse({"id": task_id, "queue": queue, "state": "incoming"})


async def cancel_task(request: Request) -> Response:
    require_token(request)
    task_id = task_id_of(request)
    state = web_state(request)
    outbox = outbox_for(state.settings)
    queue = await act(partial(manage.cancel, outbox=outbox), state, task_id)
    return JSONResponse({"id": task_id, "queue": queue, "state": "failed", "cancelled": True})


async def act(action: Any, state: WebState, task_id: str) -> str:
    """Run a manage action on a task; its errors become 404 or 409."""
    try:
        return str(await run_in_threadpool(action, state.settings.root, task_id))
    except TaskNotFound as exc:
        raise fail(404, str(exc)) from None
    except SpoolError as exc:  # not retryable / not cancellable: the task's state forbids it
        raise fail(409, str(exc)) from None


async def get_queues(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(overview, web_state(request)))


async def get_queue_tasks(request: Request) -> Response:
    dirs = queue_of(request)
    query = page_query(request, request.query_params.get("state") or "incoming")
    page = await run_in_threadpool(task_page, web_state(request).lister, dirs, query)
    return JSONResponse(
        {"tasks": page.rows, "next_after": page.next_after, "scan_cut": page.scan_cut}
    )


async def pause_queue(request: Request) -> Response:
    require_token(request)
    dirs = queue_of(request)
    body = parse_json(await read_body(request), empty={})
    reason = body.get("reason", "") if isinstance(body, dict) else None
    if not isinstance(reason, str):
        raise fail(400, 'body must be {} or {"reason": "..."}')
    await run_in_threadpool(manage.pause, dirs, reason)
    return JSONResponse({"queue": dirs.name, "paused": True})


async def resume_queue(request: Request) -> Response:
    require_token(request)
    dirs = queue_of(request)
    was = await run_in_threadpool(manage.resume, dirs)
    return JSONResponse({"queue": dirs.name, "paused": False, "was_paused": was})


async def purge_queue(request: Request) -> Response:
    require_token(request)
    dirs = queue_of(request)
    body = parse_json(await read_body(request))
    if not isinstance(body, dict) or body.get("state") not in ("done", "failed"):
        raise fail(400, 'body must be {"state": "done" | "failed", "older_than": "7d"}')
    older_than = body.get("older_than")
    seconds = None
    if older_than is not None:
        try:
            seconds = parse_duration(older_than)
        except ValueError as exc:
            raise fail(400, f"older_than: {exc}") from None
    root = web_state(request).settings.root
    result = await run_in_threadpool(manage.purge, root, body["state"], seconds, dirs.name)
    return JSONResponse({"queue": dirs.name, "state": body["state"], "deleted": result.deleted})


def failures_json(failures: Failures) -> dict[str, Any]:
    groups = [
        {
            "task": g.task,
            "error_type": g.error_type,
            "count": g.count,
            "message": g.message,
            "newest_at": g.newest_at,
            "retryable": g.retryable,
        }
        for g in failures.groups
    ]
    return {"groups": groups, "read": failures.read, "cut": failures.cut}


async def get_failures(request: Request) -> Response:
    dirs = queue_of(request)
    return JSONResponse(failures_json(await run_in_threadpool(group_failures, dirs)))


async def retry_group(request: Request) -> Response:
    """Retry the failed tasks of one (task, error type) group; rejected files are refused."""
    require_token(request)
    dirs = queue_of(request)
    body = parse_json(await read_body(request))
    if not isinstance(body, dict) or not all(
        isinstance(body.get(key), str) for key in ("task", "error_type")
    ):
        raise fail(400, 'body must be {"task": "...", "error_type": "..."}')
    if body["error_type"] == "Rejected":
        raise fail(409, "rejected files would be rejected again: fix them, then retry each")
    root = web_state(request).settings.root

    def retry_all() -> dict[str, Any]:
        failures = group_failures(dirs)
        wanted = (body["task"], body["error_type"])
        ids = next((g.ids for g in failures.groups if (g.task, g.error_type) == wanted), [])
        errors = []
        for task_id in ids:
            try:
                manage.retry(root, task_id)
            except SpoolError as exc:  # RACE: retried or purged meanwhile
                errors.append({"id": task_id, "error": str(exc)})
        return {"queue": dirs.name, "retried": len(ids) - len(errors), "errors": errors}

    return JSONResponse(await run_in_threadpool(retry_all))


async def get_metrics(request: Request) -> Response:
    from spool.inspect.metrics import render

    text = await run_in_threadpool(render, web_state(request).settings.root)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


async def get_openapi(request: Request) -> Response:
    from spool.web.openapi import document

    return JSONResponse(document())


def api_routes() -> list[Route]:
    return [
        Route("/api/tasks", post_tasks, methods=["POST"]),
        Route("/api/tasks/{task_id}", get_task, methods=["GET"]),
        Route("/api/tasks/{task_id}", cancel_task, methods=["DELETE"]),
        Route("/api/tasks/{task_id}/retry", retry_task, methods=["POST"]),
        Route("/api/batches", post_batches, methods=["POST"]),
        Route("/api/batches/{batch_id}", get_batch, methods=["GET"]),
        Route("/api/queues", get_queues, methods=["GET"]),
        Route("/api/queues/{queue}/tasks", get_queue_tasks, methods=["GET"]),
        Route("/api/queues/{queue}/pause", pause_queue, methods=["POST"]),
        Route("/api/queues/{queue}/resume", resume_queue, methods=["POST"]),
        Route("/api/queues/{queue}/purge", purge_queue, methods=["POST"]),
        Route("/api/queues/{queue}/failures", get_failures, methods=["GET"]),
        Route("/api/queues/{queue}/retry", retry_group, methods=["POST"]),
        Route("/metrics", get_metrics, methods=["GET"]),
        Route("/openapi.json", get_openapi, methods=["GET"]),
    ]


__all__ = ["api_routes"]
