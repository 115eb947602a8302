"""Supervisor configs that keep the workers (and the scheduler) resident; `spool up` is in up.py.

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
import math
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spool.config import Settings
from spool.errors import ConfigError
from spool.registry import collect_tasks, import_task_modules

PROGRAM = "spool-worker"
STOP_MARGIN_SECONDS = 30
SHIPPED_PROCESSES = 2
SHIPPED_TIMEOUT_SECONDS = 300.0  # the config's default timeout
SHIPPED_CONF = Path("conf/supervisord.conf")
RENDERED_CONF = Path("var/supervisord.conf")
SOCKET_NAME = "supervisor.sock"
SOCKET_USER = "spool"
SOCKET_PASSWORD = "spool-local-socket"  # (behind the socket's 0700: see DAEMON_SECTIONS)

SHIPPED_HEADER = """\
; spool: the workers, kept resident by Supervisor. Shipped with the project; `spool up` runs it.
;
;   spool up                                        supervisord in the foreground; Ctrl-C stops
;   supervisord -c conf/supervisord.conf            the same as a daemon (from the project's venv)
;   supervisorctl -c conf/supervisord.conf status   and stop|start|restart spool-worker:*,
;                                                   tail -f spool-worker:spool-worker-00, shutdown
;
; Paths are relative to this file: %(here)s is conf/, the project is %(here)s/.., and the socket,
; the pid file and the logs live in the project's var/ (supervisord does not create var/log/, so
; the repository keeps it, with var/log/.gitkeep). The programs get no --root/--config flags:
; they follow SPOOL_ROOT/SPOOL_CONFIG when set and conf/spool.toml otherwise. `spool` is looked
; up on supervisord's PATH: run supervisord from the project's virtualenv (its spool is beside
; its supervisord), or use `spool up`, which puts the running install first on PATH.
; This file is render_shipped_conf() of spool/deploy/supervisor.py: change both (a test checks).
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
; the socket's mode keeps other users out; the name and password make supervisord check them
; too (without them it logs a CRIT line at every start); supervisorctl and `spool up` read them
; from [supervisorctl] below
username={username}
password={password}

[supervisorctl]
serverurl=unix://{var}/{socket}
username={username}
password={password}

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
; `supervisorctl signal HUP spool-worker:*` reaches the worker the same way: it loads the task
; modules again after its running attempt (a module that does not import: the old code serves)
; if Supervisor must resort to KILL, the worker's process group goes; its handler process dies
; with the worker, and the interrupted task goes back to the queue (attempts + 1)
killasgroup=true
environment={environment}
redirect_stderr=true
{logfile_line}stdout_logfile_maxbytes=10MB
stdout_logfile_backups=5
"""

RESIDENT_PROGRAM = """\
[program:{name}]
; {comment}
command={command}
directory={directory}
{user_line}numprocs=1
autostart=true
autorestart=true
startsecs=2
startretries=3
stopsignal=TERM
stopwaitsecs={stop_wait}
environment={environment}
redirect_stderr=true
{logfile_line}stdout_logfile_maxbytes=10MB
stdout_logfile_backups=5
"""
NOTIFY_COMMENT = "delivers completion events to the sinks of [notify] (idle without them)"
INTAKE_COMMENT = "enqueues the tasks published to [mqtt_intake]'s topic (idle without it)"

SCHEDULER_COMMENT = (
    "one process enqueues the config's [schedule] tasks (more may run: each slot fires once)"
)
WEB_COMMENT = (
    "the dashboard and HTTP API (spool web: [web] host and port, 127.0.0.1:8750 by default)"
)


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
    scheduler_command: str | None = None
    scheduler_logfile: str | None = None
    web_command: str | None = None
    web_logfile: str | None = None
    # other resident programs (spool notify, spool mqtt-intake): (name, comment, command, log)
    residents: tuple[tuple[str, str, str, str | None], ...] = ()

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

    def render_resident(
        self, name: str, comment: str, command: str, logfile: str | None, stop_wait: int = 15
    ) -> str:
        """One single-process program beside the workers (scheduler, web, notify, intake)."""
        return RESIDENT_PROGRAM.format(
            name=name,
            comment=comment,
            command=command,
            directory=self.directory,
            user_line=f"user={value(self.user)}\n" if self.user else "",
            stop_wait=stop_wait,
            environment=environment_value(self.environment),
            logfile_line=f"stdout_logfile={logfile}\n" if logfile else "",
        )

    def render_all(self) -> str:
        """The worker program, and the scheduler, web and other residents with a command."""
        blocks = [self.render()]
        if self.scheduler_command:
            blocks.append(
                self.render_resident(
                    "spool-scheduler",
                    SCHEDULER_COMMENT,
                    self.scheduler_command,
                    self.scheduler_logfile,
                    stop_wait=10,
                )
            )
        if self.web_command:
            blocks.append(
                self.render_resident(
                    "spool-web", WEB_COMMENT, self.web_command, self.web_logfile, stop_wait=10
                )
            )
        for name, comment, command, logfile in self.residents:
            blocks.append(self.render_resident(name, comment, command, logfile))
        return "\n".join(blocks)


def residents(
    command: tuple[str, ...], logfile: str | None
) -> tuple[tuple[str, str, str, str | None], ...]:
    """The notifier and the MQTT intake, run by `command` + their subcommand."""

    def line(sub: str) -> str:
        return command_value(*command, sub) if len(command) > 1 else f"{command[0]} {sub}"

    return (
        ("spool-notify", NOTIFY_COMMENT, line("notify"), logfile),
        ("spool-mqtt-intake", INTAKE_COMMENT, line("mqtt-intake"), logfile),
    )


def render_conf(header: str, var: str, program: WorkerProgram) -> str:
    """A whole supervisord.conf: control socket, daemon, the workers and the scheduler."""
    daemon = DAEMON_SECTIONS.format(
        var=var, socket=SOCKET_NAME, username=SOCKET_USER, password=SOCKET_PASSWORD
    )
    sections = [header, daemon, program.render_all()]
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
        scheduler_command="spool scheduler",
        scheduler_logfile="%(here)s/../var/log/%(program_name)s.log",
        web_command="spool web",
        web_logfile="%(here)s/../var/log/%(program_name)s.log",
        residents=residents(("spool",), "%(here)s/../var/log/%(program_name)s.log"),
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
        scheduler_command=command_value(sys.executable, "-m", "spool", "scheduler"),
        scheduler_logfile=f"{var}/log/%(program_name)s.log",
        web_command=command_value(sys.executable, "-m", "spool", "web"),
        web_logfile=f"{var}/log/%(program_name)s.log",
        residents=residents((sys.executable, "-m", "spool"), f"{var}/log/%(program_name)s.log"),
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
        scheduler_command=command_value(sys.executable, "-m", "spool", "scheduler"),
        residents=residents((sys.executable, "-m", "spool"), None),
    )
    lines = [SYSTEM_HEADER.format(project=project)]
    if user:
        lines.append(
            f"; {user} needs read and write access to {env['SPOOL_ROOT']} (group access)\n"
        )
    if note:
        lines.append(f"; {note}\n")
    return "".join(lines) + program.render_all()


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


def read_conf(path: Path) -> configparser.RawConfigParser:
    """Parse a supervisord.conf as supervisord does. Raises: ConfigError."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return parser


def socket_credentials(conf: Path) -> tuple[str | None, str | None]:
    """The user name and password of a supervisord.conf's [supervisorctl] (None: none)."""
    try:
        parser = read_conf(conf)
    except ConfigError:
        return None, None
    if not parser.has_section("supervisorctl"):
        return None, None
    section = parser["supervisorctl"]
    return section.get("username"), section.get("password")
