"""`spool up`: supervisord in the foreground with the workers and the scheduler of this install.

It runs the shipped conf/supervisord.conf when that fits what was asked (workers, stop wait),
else a config rendered into var/ (see spool.deploy.supervisor); pins the root and the config in
supervisord's environment and puts this install's scripts first on its PATH. Signals: the
first Ctrl-C/SIGTERM shuts supervisord down in order (each worker finishes its running task),
a second one makes the workers stop now (running tasks go back), a third kills everything.
The second is a QUIT sent to each worker, not a second TERM: supervisord's TERM and ours could
reach a worker at one instant and count as one signal (see spool.signals).
SIGHUP is a hang-up (stop in order, as Ctrl-C; ignored under nohup) only when the terminal
`spool up` started on is gone; otherwise it was sent on purpose (`kill -HUP`, systemd's
ExecReload) and reaches the workers only, which load their task code again (see spool.reload).
"""

from __future__ import annotations

import configparser
import contextlib
import ctypes
import ctypes.util
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import xmlrpc.client
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

from spool.config import Settings
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
    socket_credentials,
    stop_wait_seconds,
    worker_count,
)
from spool.errors import SpoolError
from spool.signals import Terminal

MAX_SOCKET_PATH_BYTES = 107  # sun_path holds 108 bytes with the NUL
RPC_TIMEOUT_SECONDS = 5.0
TOKEN_FILE = "web-token"  # in the project's var/
WAIT_SLICE_SECONDS = 0.2


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
    return supervise(plan, env)


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


def supervise(plan: Plan, env: dict[str, str]) -> int:
    """Run supervisord until it exits; turn our signals into its orderly shutdown."""
    received: list[int] = []
    reloads: list[int] = []
    terminal = Terminal.now()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            received.append(signum)
        elif not terminal.hung_up():
            reloads.append(signum)
        elif not terminal.nohup:
            received.append(signum)  # its terminal was closed: stop as for Ctrl-C

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in caught}
    proc = subprocess.Popen(
        # -s: its log goes to its logfile only; a line written to a hung-up terminal would
        # kill it before it stops the workers (EIO)
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-s", "-c", str(plan.conf)],
        env=env,
        stdin=subprocess.DEVNULL,
        process_group=0,  # our terminal's Ctrl-C reaches us only; we tell supervisord once
        preexec_fn=term_when_parent_dies(),
    )
    try:
        code = wait_forwarding(proc, received, plan, reloads)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if proc.poll() is None:  # we are leaving by an exception: shut down in order
            proc.terminate()
            proc.wait()
    if code != 0:
        say(
            f"spool up: supervisord exited with {describe_exit(code)}; "
            f"see {plan.log_dir}/supervisord.log",
            error=True,
        )
        return 1
    say("spool up: stopped")
    return 0


def say(line: str, error: bool = False) -> None:
    """Print a line on our terminal; once it is gone (hung up: EIO), print nothing more."""
    try:
        print(line, file=sys.stderr if error else sys.stdout, flush=True)
    except OSError:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open until we exit)


def wait_forwarding(
    proc: subprocess.Popen[bytes], received: list[int], plan: Plan, reloads: list[int]
) -> int:
    """Wait for supervisord; 1st signal: shut down in order, 2nd: workers stop now, 3rd: KILL.
    A SIGHUP in `reloads`: the workers reload their task code."""
    handled = 0
    programs: list[tuple[str, int]] = []
    while True:
        try:
            return proc.wait(timeout=WAIT_SLICE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        if reloads and not received:
            reloads.clear()
            say(f"spool up: SIGHUP: {reload_workers(plan.socket, plan.conf)}")
        while handled < len(received):
            handled += 1
            if handled == 1:
                programs = program_pids(plan.socket, plan.conf) if plan.socket else []
                say(
                    "spool up: stopping; the workers finish their running tasks "
                    "(Ctrl-C again: put them back and stop now)"
                )
                proc.send_signal(signal.SIGTERM)
            elif handled == 2:
                say("spool up: stopping now; running tasks go back to their queues")
                # (asked again: the first answer may be missing, supervisord was starting)
                programs = (program_pids(plan.socket, plan.conf) if plan.socket else []) or programs
                stop_workers_now(programs)
            else:
                say("spool up: killing supervisord and the workers")
                signal_all([pid for _, pid in programs], signal.SIGKILL)
                proc.kill()


def stop_workers_now(programs: list[tuple[str, int]]) -> None:
    """QUIT each worker: it stops its attempt and puts the task back. An operator's own layout
    without a spool-worker program gets a second TERM, which its workers take the same way."""
    workers = [pid for group, pid in programs if group == PROGRAM]
    if workers:
        signal_all(workers, signal.SIGQUIT)
    else:
        signal_all([pid for _, pid in programs], signal.SIGTERM)


@contextlib.contextmanager
def supervisor_rpc(socket_path: Path, conf: Path) -> Iterator[Any]:
    """supervisord's XML-RPC interface over its unix socket, with the name and password of
    `conf` (calls raise OSError or xmlrpc.client.Error when it does not answer)."""
    from supervisor.xmlrpc import SupervisorTransport

    username, password = socket_credentials(conf)
    transport = SupervisorTransport(username, password, f"unix://{socket_path}")
    proxy = xmlrpc.client.ServerProxy("http://localhost", transport=transport)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(RPC_TIMEOUT_SECONDS)
    try:
        yield proxy.supervisor
    finally:
        socket.setdefaulttimeout(previous)
        transport.close()


def program_pids(socket_path: Path, conf: Path) -> list[tuple[str, int]]:
    """(group, pid) of supervisord's running programs, asked over its socket ([] if it does not
    answer)."""
    try:
        with supervisor_rpc(socket_path, conf) as rpc:
            infos = cast(list[dict[str, Any]], rpc.getAllProcessInfo())
    except (OSError, xmlrpc.client.Error):
        return []
    return [(str(info.get("group")), int(info["pid"])) for info in infos if info.get("pid")]


def reload_workers(socket_path: Path | None, conf: Path) -> str:
    """SIGHUP to the worker programs only (as `supervisorctl signal HUP spool-worker:*`);
    say what happened."""
    if socket_path is None:
        return "no control socket in the config: run `spool reload` to reload the workers"
    try:
        with supervisor_rpc(socket_path, conf) as rpc:
            rpc.signalProcessGroup(PROGRAM, "HUP")
    except (OSError, xmlrpc.client.Error) as exc:
        return f"cannot signal the workers ({exc}): run `spool reload`"
    return "the workers reload their task code after their running tasks"


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def term_when_parent_dies() -> Callable[[], None] | None:
    """A preexec_fn (Linux): supervisord gets SIGTERM, and shuts down in order, if we die."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # `spool up` died before the prctl
            os._exit(1)

    return preexec
