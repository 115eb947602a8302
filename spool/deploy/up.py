"""`spool up`: supervisord in the foreground with the workers and the scheduler of this install.

It runs the shipped conf/supervisord.conf when that fits what was asked (workers, stop wait),
else a config rendered into var/ (see spool.deploy.supervisor); pins the root and the config in
supervisord's environment and puts this install's scripts first on its PATH. When the config
runs spool-web, it hands it the dashboard's token (SPOOL_WEB_TOKEN, else [web] token, else one
kept in var/web-token). A banner says what runs where before supervisord starts; running it
and the signals that stop it are spool.deploy.foreground.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import secrets
import shlex
import socket
import sys
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from spool.config import Settings
from spool.deploy.foreground import supervise
from spool.deploy.supervisor import (
    PROGRAM,
    RENDERED_CONF,
    SHIPPED_CONF,
    SOCKET_NAME,
    STOP_MARGIN_SECONDS,
    longest_timeout,
    read_conf,
    render_local_conf,
    require_tasks,
    stop_wait_seconds,
    worker_count,
)
from spool.errors import SpoolError

MAX_SOCKET_PATH_BYTES = 107  # sun_path holds 108 bytes with the NUL
TOKEN_FILE = "web-token"  # in the project's var/


@dataclass(frozen=True)
class Plan:
    """What `spool up` runs: which config (its text, if rendered), where socket and logs are."""

    conf: Path
    rendered: str | None
    why_rendered: str | None
    socket: Path | None
    log_dir: Path
    scripts: Path | None
    processes: int
    longest_timeout: float


def run_up(
    settings: Settings, workers: int | None, started: Callable[[], None] | None = None
) -> int:
    """Run supervisord in the foreground with the workers until stopped; call `started` once
    the banner is out (the command line starts its stream of task events). Raises: SpoolError."""
    processes = worker_count(settings, workers)
    require_tasks(settings)
    longest, _ = longest_timeout(settings)
    plan = make_plan(Path.cwd(), processes, longest)
    if plan.socket is not None:
        check_socket(plan.socket, plan)
    os.makedirs(plan.log_dir, exist_ok=True)  # supervisord does not create its log directory
    if plan.rendered is not None:
        plan.conf.write_text(plan.rendered)
    env = supervisord_env(settings, plan.scripts)
    token = None
    if runs_web(plan):
        token = web_token(settings, Path.cwd() / "var", os.environ)
        env["SPOOL_WEB_TOKEN"] = token.value  # (spool-web reads it; the env one wins anyway)
    announce(settings, plan, token)
    if started is not None:
        started()
    return supervise(plan.conf, plan.socket, plan.log_dir, env)


@dataclass(frozen=True)
class WebToken:
    """The dashboard's token and where it comes from (the variable, the config, or a file)."""

    value: str
    source: str
    file: Path | None = None


def web_token(settings: Settings, var: Path, env: Mapping[str, str]) -> WebToken:
    """SPOOL_WEB_TOKEN, else the config's [web] token, else the one kept in var/web-token
    (made on the first `spool up`, mode 0600). Raises: SpoolError."""
    if env.get("SPOOL_WEB_TOKEN"):
        return WebToken(env["SPOOL_WEB_TOKEN"], "SPOOL_WEB_TOKEN")
    if settings.web_token:
        return WebToken(settings.web_token, f"[web] token of {settings.config_path}")
    path = var / TOKEN_FILE
    return WebToken(kept_token(path), shown_path(path), path)


def kept_token(path: Path) -> str:
    """The token in `path`, made first if there is none (random, readable by its owner only).
    Raises: SpoolError."""
    os.makedirs(path.parent, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return read_token(path)
    except OSError as exc:
        raise SpoolError(f"cannot make the dashboard token {path}: {exc.strerror}") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # (whatever the umask)
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    return token


def read_token(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                os.fchmod(f.fileno(), 0o600)  # a token others can read is no secret
            token = f.read(4096).strip()
    except OSError as exc:
        raise SpoolError(f"cannot read the dashboard token {path}: {exc.strerror}") from exc
    if not token or any(c.isspace() for c in token):
        raise SpoolError(f"{path}: not a token (one line, no spaces); delete it to get a new one")
    return token


def make_plan(project: Path, processes: int, longest: float) -> Plan:
    var = project / "var"
    scripts = scripts_dir()
    shipped = project / SHIPPED_CONF
    why = why_render(shipped, processes, stop_wait_seconds(longest), scripts)
    if why is None:
        return Plan(
            shipped, None, None, socket_of(shipped), var / "log", scripts, processes, longest
        )
    text = render_local_conf(project, var, processes, longest, why)
    conf = project / RENDERED_CONF
    return Plan(conf, text, why, var / SOCKET_NAME, var / "log", scripts, processes, longest)


def why_render(shipped: Path, processes: int, stop_wait: int, scripts: Path | None) -> str | None:
    """Why the shipped config cannot serve as it is, or None when it can."""
    if not shipped.is_file():
        return f"no {SHIPPED_CONF}"
    if scripts is None:
        return f"no `spool` script beside {sys.executable}"
    parser = read_conf(shipped)
    if not parser.has_section(f"program:{PROGRAM}"):
        return None  # an operator's own layout: run it as it is
    program = parser[f"program:{PROGRAM}"]
    numprocs = program.get("numprocs", "1")
    if numprocs.isdigit() and int(numprocs) != processes:
        return f"{processes} workers instead of the {numprocs} of {SHIPPED_CONF}"
    waits = program.get("stopwaitsecs", "10")
    if waits.isdigit() and int(waits) < stop_wait:
        return f"tasks may run {stop_wait - STOP_MARGIN_SECONDS} s, {SHIPPED_CONF} waits {waits} s"
    return None


def socket_of(conf: Path) -> Path | None:
    """The unix socket a supervisord.conf listens on (None: it has none)."""
    try:
        raw = read_conf(conf).get("unix_http_server", "file")
    except configparser.Error:
        return None
    here = str(conf.parent.absolute())
    return Path(os.path.normpath(raw.strip().replace("%(here)s", here).replace("%%", "%")))


def check_socket(path: Path, plan: Plan) -> None:
    """Raises: SpoolError when the socket path is unusable or a supervisord already listens."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise SpoolError(
            f"socket path {path} is longer than the {MAX_SOCKET_PATH_BYTES} bytes a unix socket "
            "allows: run spool up from a shorter directory"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return  # nobody listens (supervisord removes a stale socket itself)
    finally:
        probe.close()
    ctl = control_command(plan)
    raise SpoolError(
        f"a supervisord already runs for this project (socket {path}): "
        f"see it with `{ctl} status`, stop it with `{ctl} shutdown`"
    )


def scripts_dir() -> Path | None:
    """The directory holding this install's `spool` script (a venv's bin/), if any."""
    candidates = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    with contextlib.suppress(KeyError):
        scheme = sysconfig.get_preferred_scheme("user")
        candidates.append(Path(sysconfig.get_path("scripts", scheme)))
    for directory in candidates:
        script = directory / "spool"
        if script.is_file() and os.access(script, os.X_OK) and is_python_script(script):
            return directory
    return None


def is_python_script(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(b"#!") and b"python" in head


def supervisord_env(settings: Settings, scripts: Path | None) -> dict[str, str]:
    """supervisord's environment (its programs inherit it): this root, this config, this install."""
    env = dict(os.environ)
    env["SPOOL_ROOT"] = str(settings.root.absolute())
    if settings.config_path is not None:
        env["SPOOL_CONFIG"] = str(settings.config_path.absolute())
    if scripts is not None:
        env["PATH"] = os.pathsep.join([str(scripts), env.get("PATH") or os.defpath])
    return env


def control_command(plan: Plan) -> str:
    conf = shown_path(plan.conf)
    ctl = plan.scripts / "supervisorctl" if plan.scripts is not None else None
    if ctl is not None and ctl.is_file():
        return f"{shlex.quote(str(ctl))} -c {shlex.quote(conf)}"
    return f"{shlex.quote(sys.executable)} -m supervisor.supervisorctl -c {shlex.quote(conf)}"


def shown_path(path: Path) -> str:
    """`path` relative to the current directory when it is under it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def announce(settings: Settings, plan: Plan, token: WebToken | None) -> None:
    conf = shown_path(plan.conf)
    where = f"{conf}, rendered: {plan.why_rendered}" if plan.why_rendered else conf
    config = settings.config_path.absolute() if settings.config_path else "none"
    lines = [
        f"spool up: supervisord with {plan.processes} workers ({where})",
        f"  root     {settings.root.absolute()}",
        f"  config   {config} (tasks: {', '.join(settings.tasks)})",
        f"  socket   {plan.socket or 'see ' + conf}",
        f"  logs     {plan.log_dir}/ ({', '.join(log_names(plan))})",
        f"  control  {control_command(plan)} status",
        *dashboard_lines(settings, token),
        f"Ctrl-C stops the workers after their running tasks (up to "
        f"{stop_wait_seconds(plan.longest_timeout)} s); press it again to stop them now.",
    ]
    print("\n".join(lines), flush=True)


def conf_text(plan: Plan) -> str:
    try:
        return plan.rendered if plan.rendered is not None else plan.conf.read_text()
    except OSError:
        return ""


def runs_web(plan: Plan) -> bool:
    return "[program:spool-web]" in conf_text(plan)


def log_names(plan: Plan) -> list[str]:
    """The log files of supervisord and of each program the config runs."""
    names = ["supervisord.log"]
    for program in re.findall(r"^\[program:([^\]]+)\]", conf_text(plan), re.MULTILINE):
        names.append(f"{program}-NN.log" if program == PROGRAM else f"{program}.log")
    return names


def dashboard_lines(settings: Settings, token: WebToken | None) -> list[str]:
    """Where spool-web serves and how to use its token, when the config runs it."""
    if token is None:
        return []
    host = settings.web_host if ":" not in settings.web_host else f"[{settings.web_host}]"
    url = f"http://{host}:{settings.web_port}/"
    lines = [f"  web      {url} (spool-web: dashboard and HTTP API)"]
    if token.file is None:
        return [*lines, f"  token    from {token.source}"]
    shown = shlex.quote(token.source)
    return [
        *lines,
        f"  token    in {token.source} (yours only, kept; SPOOL_WEB_TOKEN overrides it): paste",
        "           it in the dashboard's token field (top right) for its buttons; for the API:",
        f'           curl -H "Authorization: Bearer $(cat {shown})" -d \'{{"task": "..."}}\' '
        f"{url}api/tasks",
    ]
