"""`spool web`: the dashboard and the HTTP intake, one Starlette app served by uvicorn.

Pages (server-rendered with Jinja2, refreshed in place by static/app.js, which fetches the
same page with ?partial=1 every two seconds): the overview, a queue's tasks per state (its
failures grouped), one task, a batch, search results, the API's document. Actions on them go
through the JSON API (api.py) with the bearer token the operator typed into the page (kept in
sessionStorage); the app sets no cookies.

Safety: it binds 127.0.0.1 unless told otherwise and refuses a non-loopback address without a
token; on loopback it answers only to loopback Host names (no DNS rebinding); every error is a
JSON {"error": ...} with its code, never a traceback; responses forbid framing and sniffing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spool.config import Settings
from spool.envelope import attempt_seconds
from spool.errors import BatchNotFound, SpoolError
from spool.inspect.failures import group_failures
from spool.inspect.listing import running
from spool.inspect.paging import task_page
from spool.inspect.search import search
from spool.inspect.workflow import links_of
from spool.layout import STATES
from spool.lookup import locate, read_found
from spool.web import views
from spool.web.api import api_routes
from spool.web.overview import overview, queue_counts
from spool.web.requests import WebState, page_query, queue_of, web_state
from spool.workflows.batches import summary

PACKAGE_DIR = Path(__file__).resolve().parent
OUTPUT_SHOWN_BYTES = 16 * 1024  # of the last attempt's output, on the task page
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    ),
]
log = logging.getLogger("spool.web")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI wrapper: refuse foreign Host names on loopback; add the security headers."""

    def __init__(self, app: ASGIApp, allowed_hosts: set[str] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.allowed_hosts is not None:
            headers = dict(scope["headers"])
            host = headers.get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed_hosts:
                refused = JSONResponse({"error": "unexpected Host header"}, status_code=400)
                await refused(scope, receive, send)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ---- errors ------------------------------------------------------------------------------


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    if isinstance(exc, SpoolError):
        return JSONResponse({"error": str(exc)}, status_code=500)
    return JSONResponse({"error": "internal error (see the server log)"}, status_code=500)


# ---- pages -------------------------------------------------------------------------------


def templates() -> Jinja2Templates:
    found = Jinja2Templates(directory=str(PACKAGE_DIR / "templates"))
    found.env.globals["states"] = STATES
    found.env.filters["age"] = views.duration
    found.env.filters["when"] = views.instant
    found.env.filters["pretty"] = views.pretty
    found.env.filters["progress"] = views.progress_text
    return found


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    """The page, or with ?partial=1 only its live part (what app.js swaps in)."""
    partial = request.query_params.get("partial") == "1"
    view: Jinja2Templates = request.app.state.templates
    page = f"_{name}" if partial else name
    return view.TemplateResponse(request, page, context, status_code=status)


async def overview_page(request: Request) -> Response:
    data = await run_in_threadpool(overview, web_state(request))
    queues = data["queues"].items()
    top = views.shared_top([q["finished_per_minute"] for _, q in queues])
    charts = {name: views.chart(q["finished_per_minute"], top) for name, q in queues}
    slowest = views.runtime_top([q["runtime_per_minute"] for _, q in queues])
    runtimes = {name: views.runtime_chart(q["runtime_per_minute"], slowest) for name, q in queues}
    context: dict[str, Any] = {"data": data, "charts": charts, "runtimes": runtimes}
    context["token_set"] = token_set(request)
    return render(request, "overview.html", context)


async def queue_page(request: Request) -> Response:
    state = web_state(request)
    dirs = queue_of(request)
    context: dict[str, Any] = {"queue": dirs.name, "params": dict(request.query_params)}
    wanted = request.query_params.get("state") or "incoming"
    context["state"] = wanted
    try:
        query = page_query(request, wanted)
    except HTTPException as exc:
        context.update(error=exc.detail, page=None)
        return render(request, "queue.html", context, 400)
    context["counts"] = await run_in_threadpool(queue_counts, state, dirs)
    if wanted == "failed" and query.after is None and not query.filtered:
        context["failures"] = await run_in_threadpool(group_failures, dirs)
    context["page"] = await run_in_threadpool(task_page, state.lister, dirs, query)
    context["query"] = query
    return render(request, "queue.html", context)


async def task_detail_page(request: Request) -> Response:
    task_id = str(request.path_params["task_id"])
    found = await run_in_threadpool(locate, web_state(request).settings.root, task_id)
    if found is None:
        return render(request, "task.html", {"task_id": task_id, "task": None}, 404)
    root = web_state(request).settings.root
    task = await run_in_threadpool(read_found, found)
    attempts = views.attempts_of(task)
    context = {
        "task_id": task_id,
        "task": task,
        "attempts": attempts,
        "error_in_history": views.final_error_is_last_attempt(task, attempts),
        "took": attempt_seconds(task),
        "raw": await run_in_threadpool(views.raw_file, found.path) if found.note else None,
    }
    if found.state == "processing":
        context["running"] = running(found.path, task.get("attempts"), time.time())
    context.update(await run_in_threadpool(views.beside_view, root, found, task))
    context["links"] = await run_in_threadpool(links_of, root, task)
    return render(request, "task.html", context)


async def search_page(request: Request) -> Response:
    text = request.query_params.get("q", "")
    found = await run_in_threadpool(search, web_state(request).settings.root, text)
    if len(found.rows) == 1 and found.rows[0]["id"] == text.strip():
        return RedirectResponse(f"/tasks/{text.strip()}", status_code=303)
    return render(request, "search.html", {"q": text, "found": found})


async def api_page(request: Request) -> Response:
    from spool.web.openapi import document

    return render(request, "api.html", {"doc": document()})


async def batch_page(request: Request) -> Response:
    batch_id = str(request.path_params["batch_id"])
    try:
        progress = await run_in_threadpool(summary, web_state(request).settings.root, batch_id)
    except BatchNotFound:
        return render(request, "batch.html", {"batch_id": batch_id, "batch": None}, 404)
    return render(request, "batch.html", {"batch_id": batch_id, "batch": progress.to_json()})


async def favicon(request: Request) -> Response:
    return RedirectResponse("/static/favicon.svg", status_code=301)


def token_set(request: Request) -> bool:
    return bool(web_state(request).settings.web_token)


# ---- the app -----------------------------------------------------------------------------


def create_app(settings: Settings, allowed_hosts: set[str] | None = None) -> ASGIApp:
    """The ASGI app. `allowed_hosts`: Host names accepted (None: any, for non-loopback)."""
    routes = [
        Route("/", overview_page, methods=["GET"]),
        Route("/queues/{queue}", queue_page, methods=["GET"]),
        Route("/tasks/{task_id}", task_detail_page, methods=["GET"]),
        Route("/search", search_page, methods=["GET"]),
        Route("/docs/api", api_page, methods=["GET"]),
        Route("/batches/{batch_id}", batch_page, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        *api_routes(),
        Mount("/static", StaticFiles(directory=str(PACKAGE_DIR / "static")), name="static"),
    ]
    app = Starlette(
        debug=False,
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.web = WebState(settings)
    app.state.templates = templates()
    return Guard(app, allowed_hosts)


def loopback_hosts(host: str) -> set[str] | None:
    """The Host names to accept when bound to `host` (None when not bound to loopback)."""
    if not is_loopback(host):
        return None
    return LOOPBACK_NAMES | {host.lower(), f"[{host.strip('[]').lower()}]"}


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, made before anything announces the address.

    Raises: SpoolError (the port is in use, the address is not this host's, ...).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
        reason = (exc.strerror or str(exc)).lower()
        raise SpoolError(f"cannot listen on {shown}:{port}: {reason}") from exc
    return sock


def serve(settings: Settings, host: str, port: int, sock: socket.socket) -> int:
    """Serve on `sock` (see listen) until SIGINT/SIGTERM; return the exit code."""
    import uvicorn

    config = uvicorn.Config(
        create_app(settings, loopback_hosts(host)),
        host=host,
        port=port,
        log_level="info",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    server = quiet_server_class()(config)
    server.run(sockets=[sock])
    return 0 if server.started else 1


def quiet_server_class() -> type[Any]:
    import uvicorn

    class Quiet(uvicorn.Server):
        """uvicorn's server, but INT and TERM end it with exit 0 instead of being raised again
        once it has shut down: a process dead by SIGTERM is an unexpected stop to supervisord
        (a WARN line at every `spool up` stop)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            caught = (signal.SIGINT, signal.SIGTERM)
            previous = {signum: signal.signal(signum, self.handle_exit) for signum in caught}
            try:
                yield
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)

    return Quiet
