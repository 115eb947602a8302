"""Supervisor: the config that keeps the workers resident, and `spool up` that runs it.

One template renders every config, so the three ways to run the workers behave alike:

- conf/supervisord.conf, shipped (`render_shipped_conf()`; a test keeps the file equal to it):
  paths relative to the file (`%(here)s` is conf/, the project `%(here)s/..`), the programs run
  `spool worker` found on supervisord's PATH and get no --root/--config flags, so they follow
  SPOOL_ROOT/SPOOL_CONFIG when set and conf/spool.toml otherwise.
- `spool up` runs supervisord in the foreground on that file, or on one rendered into var/ when
  the file is missing or asks for other numbers (workers, stop wait). It pins the root and the
  config in supervisord's environment and puts this install's scripts first on its PATH, so
  the workers are the current install's, whichever shell it was started from.
- `spool supervisor-config` prints a [program:] block with absolute paths for a system
  supervisord (/etc/supervisor/conf.d/).

Stopping: supervisord sends TERM straight to each worker (no shell between), which finishes its
running attempt and exits 0. `stopwaitsecs` is the longest task timeout plus a margin; only
after it does Supervisor send KILL, and the interrupted task returns to the queue through
recovery (attempts + 1).
"""

from __future__ import annotations

import configparser
import contextlib
import ctypes
import ctypes.util
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

from spool.config import Settings
from spool.errors import ConfigError, SpoolError
from spool.registry import collect_tasks, import_task_modules

PROGRAM = "spool-worker"
STOP_MARGIN_SECONDS = 30
SHIPPED_PROCESSES = 2
SHIPPED_TIMEOUT_SECONDS = 300.0  # the config's default timeout
SHIPPED_CONF = Path("conf/supervisord.conf")
RENDERED_CONF = Path("var/supervisord.conf")
SOCKET_NAME = "supervisor.sock"
MAX_SOCKET_PATH_BYTES = 107  # sun_path holds 108 bytes with the NUL
RPC_TIMEOUT_SECONDS = 5.0
WAIT_SLICE_SECONDS = 0.2

SHIPPED_HEADER = """\
; spool: the workers, kept resident by Supervisor. Shipped with the project; `spool up` runs it.
;
;   spool up                                        supervisord in the foreground; Ctrl-C stops
;   supervisord -c conf/supervisord.conf            the same as a daemon (from the project's venv)
;   supervisorctl -c conf/supervisord.conf status   and stop|start|restart spool-worker:*,
;                                                   tail -f spool-worker:spool-worker-00, shutdown
;
; Paths are relative to this file: %(here)s is conf/, the project is %(here)s/.., and the socket,
; the pid file and the logs live in the project's var/ (var/log/ must exist before supervisord
; starts; `spool up` creates it). The programs get no --root/--config flags: they follow
; SPOOL_ROOT/SPOOL_CONFIG when set and conf/spool.toml otherwise. `spool` is looked up on
; supervisord's PATH: run supervisord from the project's virtualenv (its spool is beside its
; supervisord), or use `spool up`, which puts the running install first on PATH.
; This file is render_shipped_conf() in spool/supervisor.py: change both (a test compares them).
"""

RENDERED_HEADER = """\
; spool: the workers, kept resident by Supervisor. Written by `spool up` for {project}
; ({why}); written again by every `spool up`, so edit conf/supervisord.conf instead.
;   supervisorctl -c {conf} status
"""

SYSTEM_HEADER = """\
; spool workers of {project}, for a system supervisord: save as
; /etc/supervisor/conf.d/spool.conf (rename [program:spool-worker] if this host runs more than one
; spool project), then `supervisorctl reread && supervisorctl update`.
"""

DAEMON_SECTIONS = """\
[unix_http_server]
file={var}/{socket}
chmod=0700

[supervisorctl]
serverurl=unix://{var}/{socket}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisord]
logfile={var}/log/supervisord.log
logfile_maxbytes=10MB
logfile_backups=5
loglevel=info
pidfile={var}/supervisord.pid
childlogdir={var}/log
"""

WORKER_PROGRAM = """\
[program:spool-worker]
command={command}
directory={directory}
{user_line}numprocs={processes}
process_name=%(program_name)s-%(process_num)02d
autostart=true
autorestart=true
; a worker alive after 2 s has started; one that exits sooner (a bad config) is tried 3 times
startsecs=2
startretries=3
; TERM reaches only the worker (no shell between): it claims nothing more, finishes the running
; attempt and exits 0. stopwaitsecs is the longest task timeout ({longest}) plus {margin} s.
stopsignal=TERM
stopwaitsecs={stop_wait}
; if Supervisor must resort to KILL, the worker's process group goes; its handler process dies
; with the worker, and the interrupted task goes back to the queue (attempts + 1)
killasgroup=true
environment={environment}
redirect_stderr=true
{logfile_line}stdout_logfile_maxbytes=10MB
stdout_logfile_backups=5
"""

SCHEDULER_NOTE = """\
; [program:spool-scheduler] comes with `spool scheduler` (a separate issue): one process that
; enqueues the config's [schedule] tasks. It will look like this:
;[program:spool-scheduler]
;command=spool scheduler
;directory={directory}
;numprocs=1
;autostart=true
;autorestart=true
;stopsignal=TERM
;stopwaitsecs=10
;environment=PYTHONUNBUFFERED="1"
"""


# ---- rendering -----------------------------------------------------------------------------


def value(text: str) -> str:
    """`text` as a supervisor config value: '%' is its expansion character."""
    return text.replace("%", "%%")


def command_value(*args: str) -> str:
    """A command line supervisor splits (shlex) back into exactly `args`."""
    return value(" ".join(shlex.quote(arg) for arg in args))


def environment_value(env: Mapping[str, str]) -> str:
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return value(",".join(f"{key}={quoted(val)}" for key, val in env.items()))


def stop_wait_seconds(longest_timeout: float) -> int:
    """How long Supervisor lets a stopping worker finish its attempt before it sends KILL."""
    return math.ceil(longest_timeout) + STOP_MARGIN_SECONDS


@dataclass(frozen=True)
class WorkerProgram:
    """The [program:spool-worker] block, with every value already in supervisor syntax."""

    command: str
    directory: str
    processes: int
    longest_timeout: float
    environment: Mapping[str, str]
    logfile: str | None = None  # None: supervisor's AUTO log in its childlogdir
    user: str | None = None

    def render(self) -> str:
        return WORKER_PROGRAM.format(
            command=self.command,
            directory=self.directory,
            user_line=f"user={value(self.user)}\n" if self.user else "",
            processes=self.processes,
            longest=f"{self.longest_timeout:g} s",
            margin=STOP_MARGIN_SECONDS,
            stop_wait=stop_wait_seconds(self.longest_timeout),
            environment=environment_value(self.environment),
            logfile_line=f"stdout_logfile={self.logfile}\n" if self.logfile else "",
        )


def render_conf(header: str, var: str, program: WorkerProgram) -> str:
    """A whole supervisord.conf: control socket, daemon, the workers, the scheduler note."""
    sections = [header, DAEMON_SECTIONS.format(var=var, socket=SOCKET_NAME), program.render()]
    sections.append(SCHEDULER_NOTE.format(directory=program.directory))
    return "\n".join(sections)


def render_shipped_conf() -> str:
    """The text of the shipped conf/supervisord.conf."""
    program = WorkerProgram(
        command="spool worker",
        directory="%(here)s/..",
        processes=SHIPPED_PROCESSES,
        longest_timeout=SHIPPED_TIMEOUT_SECONDS,
        environment={"PYTHONUNBUFFERED": "1"},
        logfile="%(here)s/../var/log/%(program_name)s-%(process_num)02d.log",
    )
    return render_conf(SHIPPED_HEADER, "%(here)s/../var", program)


def render_local_conf(
    project_dir: Path, var_dir: Path, processes: int, longest_timeout: float, why: str
) -> str:
    """A supervisord.conf with absolute paths that runs this interpreter's workers."""
    var = value(str(var_dir))
    program = WorkerProgram(
        command=command_value(sys.executable, "-m", "spool", "worker"),
        directory=value(str(project_dir)),
        processes=processes,
        longest_timeout=longest_timeout,
        environment={"PYTHONUNBUFFERED": "1"},
        logfile=f"{var}/log/%(program_name)s-%(process_num)02d.log",
    )
    header = RENDERED_HEADER.format(project=project_dir, why=why, conf=var_dir / "supervisord.conf")
    return render_conf(header, var, program)


def render_program_block(settings: Settings, workers: int | None, user: str | None) -> str:
    """A [program:spool-worker] block with absolute paths. Raises: ConfigError."""
    processes = worker_count(settings, workers)
    require_tasks(settings)
    longest, note = longest_timeout(settings)
    env = {"PYTHONUNBUFFERED": "1", "SPOOL_ROOT": str(settings.root.absolute())}
    if settings.config_path is not None:
        env["SPOOL_CONFIG"] = str(settings.config_path.absolute())
    project = settings.project_dir.absolute()
    program = WorkerProgram(
        command=command_value(sys.executable, "-m", "spool", "worker"),
        directory=value(str(project)),
        processes=processes,
        longest_timeout=longest,
        environment=env,
        user=user,
    )
    lines = [SYSTEM_HEADER.format(project=project)]
    if user:
        lines.append(
            f"; {user} needs read and write access to {env['SPOOL_ROOT']} (group access)\n"
        )
    if note:
        lines.append(f"; {note}\n")
    return "".join(lines) + program.render()


# ---- what the config asks for --------------------------------------------------------------


def worker_count(settings: Settings, workers: int | None) -> int:
    count = settings.processes if workers is None else workers
    if count < 1:
        raise ConfigError("workers: at least 1 is needed (--workers N, or [workers] processes)")
    return count


def require_tasks(settings: Settings) -> None:
    """Raises: ConfigError when no tasks modules are configured (workers would reject all)."""
    if settings.tasks:
        return
    if settings.config_path is None:
        raise ConfigError(
            "no config file (conf/spool.toml, SPOOL_CONFIG or --config): no tasks to run"
        )
    raise ConfigError(
        f"{settings.config_path}: names no tasks modules (tasks = [...]): no tasks to run"
    )


def longest_timeout(settings: Settings) -> tuple[float, str | None]:
    """The longest timeout of the configured tasks, and a note when only the default is known."""
    try:
        tasks = collect_tasks(import_task_modules(settings.tasks, str(settings.project_dir)))
    except ConfigError as exc:
        return settings.timeout_seconds, f"task timeouts unknown ({exc}); using the config default"
    timeouts = [t.options.timeout for t in tasks.values() if t.options.timeout is not None]
    return max([settings.timeout_seconds, *timeouts]), None


# ---- spool up ------------------------------------------------------------------------------


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


def run_up(settings: Settings, workers: int | None) -> int:
    """Run supervisord in the foreground with the workers until stopped. Raises: SpoolError."""
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
    announce(settings, plan)
    return supervise(plan, env)


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


def read_conf(path: Path) -> configparser.RawConfigParser:
    """Parse a supervisord.conf as supervisord does. Raises: ConfigError."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return parser


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


def announce(settings: Settings, plan: Plan) -> None:
    conf = shown_path(plan.conf)
    where = f"{conf}, rendered: {plan.why_rendered}" if plan.why_rendered else conf
    config = settings.config_path.absolute() if settings.config_path else "none"
    lines = [
        f"spool up: supervisord with {plan.processes} workers ({where})",
        f"  root     {settings.root.absolute()}",
        f"  config   {config} (tasks: {', '.join(settings.tasks)})",
        f"  socket   {plan.socket or 'see ' + conf}",
        f"  logs     {plan.log_dir}/ (supervisord.log, {PROGRAM}-NN.log)",
        f"  control  {control_command(plan)} status",
        f"Ctrl-C stops the workers after their running tasks (up to "
        f"{stop_wait_seconds(plan.longest_timeout)} s); press it again to stop them now.",
    ]
    print("\n".join(lines), flush=True)


def supervise(plan: Plan, env: dict[str, str]) -> int:
    """Run supervisord until it exits; turn our signals into its orderly shutdown."""
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in stop_signals}
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(plan.conf)],
        env=env,
        process_group=0,  # our terminal's Ctrl-C reaches us only; we tell supervisord once
        preexec_fn=die_with_parent,
    )
    try:
        code = wait_forwarding(proc, received, plan)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if proc.poll() is None:  # we are leaving by an exception: shut down in order
            proc.terminate()
            proc.wait()
    if code != 0:
        print(
            f"spool up: supervisord exited with {describe_exit(code)}; "
            f"see {plan.log_dir}/supervisord.log",
            file=sys.stderr,
            flush=True,
        )
        return 1
    print("spool up: stopped", flush=True)
    return 0


def wait_forwarding(proc: subprocess.Popen[bytes], received: list[int], plan: Plan) -> int:
    """Wait for supervisord; 1st signal: shut down in order, 2nd: workers stop now, 3rd: KILL."""
    handled = 0
    pids: list[int] = []
    while True:
        try:
            return proc.wait(timeout=WAIT_SLICE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        while handled < len(received):
            handled += 1
            if handled == 1:
                pids = program_pids(plan.socket) if plan.socket else []
                print(
                    "spool up: stopping; the workers finish their running tasks "
                    "(Ctrl-C again: put them back and stop now)",
                    flush=True,
                )
                proc.send_signal(signal.SIGTERM)
            elif handled == 2:
                print("spool up: stopping now; running tasks go back to their queues", flush=True)
                signal_all(pids, signal.SIGTERM)  # a worker's second TERM
            else:
                print("spool up: killing supervisord and the workers", flush=True)
                signal_all(pids, signal.SIGKILL)
                proc.kill()


def program_pids(socket_path: Path) -> list[int]:
    """Pids of supervisord's running programs, asked over its socket ([] if it does not answer)."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    proxy = xmlrpc.client.ServerProxy("http://localhost", transport=transport)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(RPC_TIMEOUT_SECONDS)
    try:
        infos = cast(list[dict[str, Any]], proxy.supervisor.getAllProcessInfo())
    except (OSError, xmlrpc.client.Error):
        return []
    finally:
        socket.setdefaulttimeout(previous)
        transport.close()
    return [int(info["pid"]) for info in infos if info.get("pid")]


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def die_with_parent() -> None:
    """(In supervisord, before exec) Linux: shut down in order when `spool up` dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
