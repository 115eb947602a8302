"""A request to `spool web`: the state its handlers share and the checks it passes first.

Every handler, page or endpoint, gets the `WebState` the app was made with (`web_state`). What
a request brings is checked here before it reaches anything on disk: the bearer token of a
change (compared in constant time; with none configured a change is refused, 403), the body
(at most [web] max_body bytes, 413 beyond, also without Content-Length; UTF-8 JSON without NaN
or Infinity), task ids and queue names (checked before they touch a path, 404 otherwise) and
the page a listing asks for. A failed check is an HTTPException with a 4xx code, which the app
answers as {"error": "..."}.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

from starlette.exceptions import HTTPException
from starlette.requests import Request

from spool.config import Settings, parse_duration
from spool.envelope import is_valid_id, reject_constant
from spool.errors import InvalidQueueName
from spool.inspect.paging import Lister, PageQuery
from spool.inspect.throughput import Throughput
from spool.layout import STATES, QueueDirs, check_queue_name
from spool.manifest import Catalog, CatalogCache

TOKEN_HELP = (
    "no token is configured, so changes are refused: set SPOOL_WEB_TOKEN or [web] token in "
    "the config and restart spool web"
)
PAGE_SIZE_MAX = 500


@dataclass
class WebState:
    """What the web app's handlers share: the settings, the page lister, the throughput."""

    settings: Settings
    lister: Lister = field(default_factory=Lister)
    rates: Throughput = field(init=False)
    catalogs: CatalogCache = field(init=False)

    def __post_init__(self) -> None:
        self.rates = Throughput(self.settings.root)
        self.catalogs = CatalogCache(self.settings.root)

    def catalog(self) -> Catalog:
        """The published tasks (spool.manifest), read again when they change."""
        return self.catalogs.current(time.monotonic())


def web_state(request: Request) -> WebState:
    return cast(WebState, request.app.state.web)


def fail(status: int, message: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status, message, headers)


# ---- request checks ---------------------------------------------------------------------


def require_token(request: Request) -> None:
    """Refuse the request unless it carries the configured bearer token."""
    expected = web_state(request).settings.web_token
    if not expected:
        raise fail(403, TOKEN_HELP)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not given.strip():
        raise fail(401, "missing token: send Authorization: Bearer <token>", challenge)
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise fail(401, "wrong token", challenge)


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) beyond [web] max_body, also without Content-Length."""
    limit = web_state(request).settings.web_max_body
    too_big = fail(413, f"request body is larger than {limit} bytes ([web] max_body)")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise fail(400, "invalid Content-Length")
        if int(declared) > limit:
            raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes, empty: Any = ...) -> Any:
    """The body as JSON (UTF-8, no NaN or Infinity); `empty` stands for an empty body."""
    if not body.strip() and empty is not ...:
        return empty
    try:
        return json.loads(body.decode("utf-8"), parse_constant=reject_constant)
    except UnicodeDecodeError as exc:
        raise fail(400, f"body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise fail(400, f"body is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise fail(400, "body is not valid JSON: nested too deeply") from None


def task_id_of(request: Request) -> str:
    task_id = str(request.path_params["task_id"])
    if not is_valid_id(task_id):
        raise fail(404, "unknown task id")
    return task_id


def queue_of(request: Request, must_exist: bool = True) -> QueueDirs:
    try:
        name = check_queue_name(str(request.path_params["queue"]))
    except InvalidQueueName:
        raise fail(404, "unknown queue") from None
    dirs = QueueDirs(web_state(request).settings.root, name)
    if must_exist and not dirs.base.is_dir():
        raise fail(404, f"unknown queue: {name}")
    return dirs


def duration_param(request: Request, name: str) -> float | None:
    text = request.query_params.get(name) or None
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise fail(400, f"{name}: {exc}") from None


def page_query(request: Request, state: str) -> PageQuery:
    """The page a request asks for (state, task, since, older_than, after, limit)."""
    if state not in STATES:
        raise fail(400, f"state must be one of {', '.join(STATES)}")
    params = request.query_params
    limit_text = params.get("limit") or "50"
    if not limit_text.isdigit() or not 0 < int(limit_text) <= PAGE_SIZE_MAX:
        raise fail(400, f"limit must be a number from 1 to {PAGE_SIZE_MAX}")
    return PageQuery(
        state=state,
        task=params.get("task") or None,
        since_seconds=duration_param(request, "since"),
        older_than_seconds=duration_param(request, "older_than"),
        after=params.get("after") or None,
        size=int(limit_text),
    )
