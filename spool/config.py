"""Settings: where the spool lives and how workers behave.

Precedence, for the root: `--root` flag > SPOOL_ROOT > `root` in the config file > var/spool.
For the file: `--config` flag > SPOOL_CONFIG > conf/spool.toml when present > none.
Relative paths are taken from the current directory, like every other command-line path.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spool.envelope import FieldError, parse_rate
from spool.errors import ConfigError
from spool.layout import QUEUE_RE
from spool.notify_config import (
    IntakeSettings,
    NotifySettings,
    parse_mqtt_intake,
    parse_notify,
)
from spool.tables import as_table, check_keys, duration, want
from spool.tables import parse_duration as parse_duration  # (the one reader of time spans)

DEFAULT_ROOT = Path("var/spool")
DEFAULT_CONFIG = Path("conf/spool.toml")
MIB = 1024 * 1024

TOP_KEYS = {"root", "tasks", "defaults", "workers", "schedule", "log", "retention", "web"}
TOP_KEYS |= {
    "notify",
    "mqtt_intake",
    "cluster",
    "queues",
}  # notify and mqtt_intake: notify_config.py
DEFAULTS_KEYS = {
    "max_retries",
    "timeout",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "max_file_bytes",
    "max_lost",
}
WORKERS_KEYS = {"processes", "queues", "rescan_seconds", "recover_seconds", "unknown_task_grace"}
WORKERS_KEYS |= {"output_bytes", "claim_batch"}
LOG_KEYS = {"format", "level"}
RETENTION_KEYS = {"done", "failed"}
WEB_KEYS = {"host", "port", "token", "max_body"}
CLUSTER_KEYS = {"shared", "poll_interval", "lease"}
QUEUE_KEYS = {"rate"}


@dataclass(frozen=True)
class Settings:
    """Everything configurable, resolved once from flags, environment and file."""

    root: Path = DEFAULT_ROOT
    config_path: Path | None = None
    tasks: tuple[str, ...] = ()
    max_retries: int = 3
    max_lost: int = 3  # lost attempts (the worker or handler process died) before failed/
    timeout_seconds: float = 300.0
    retry_backoff_seconds: float = 1.0
    retry_backoff_max_seconds: float = 3600.0
    retry_jitter: bool = True
    max_file_bytes: int = MIB
    processes: int = 2
    queues: tuple[str, ...] = ()  # empty: every queue under the root
    rescan_seconds: float = 2.0
    recover_seconds: float = 2.0
    # a task no live worker knows is held this long after a manifest last named it (deploys)
    unknown_task_grace_seconds: float = 600.0
    output_limit_bytes: int = 64 * 1024  # of each attempt's output kept beside the task
    claim_batch: int = 8  # tasks claimed at once from a backlog (see spool.handover)
    log_format: str = "text"
    log_level: str = "INFO"
    schedule: Mapping[str, Any] = field(default_factory=dict)
    retention: Mapping[str, float] = field(default_factory=dict)  # state -> seconds
    web_host: str = "127.0.0.1"
    web_port: int = 8750
    web_token: str | None = field(default=None, repr=False)  # SPOOL_WEB_TOKEN > [web] token
    web_max_body: int = MIB
    notify: NotifySettings = field(default_factory=NotifySettings)  # completion events
    mqtt_intake: IntakeSettings | None = None  # `spool mqtt-intake`
    # [cluster]: several hosts on one spool (see spool.cluster); None: decided by mount type
    shared: bool | None = None
    poll_seconds: float = 0.5  # shared mode: how often workers list incoming/
    lease_seconds: float = 30.0  # shared mode: a claim unchanged this long is recovered
    queue_rates: Mapping[str, str] = field(default_factory=dict)  # [queues.NAME] rate

    @property
    def project_dir(self) -> Path:
        """The directory relative paths of the config refer to (where tasks modules live)."""
        return Path.cwd()


def config_stamp(settings: Settings) -> tuple[int, int] | None:
    """The config file's (mtime in ns, size), to notice that it changed; None without one."""
    path = settings.config_path
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def resolve_config_path(config_flag: str | None, env: Mapping[str, str]) -> Path | None:
    if config_flag:
        return Path(config_flag)
    if env.get("SPOOL_CONFIG"):
        return Path(env["SPOOL_CONFIG"])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load_settings(
    root_flag: str | None = None,
    config_flag: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve Settings by the precedence rules. Raises: ConfigError."""
    env = os.environ if env is None else env
    path = resolve_config_path(config_flag, env)
    data = read_toml(path) if path is not None else {}
    values = settings_from_table(data, path)
    if root_flag:
        values["root"] = Path(root_flag)
    elif env.get("SPOOL_ROOT"):
        values["root"] = Path(env["SPOOL_ROOT"])
    if env.get("SPOOL_WEB_TOKEN"):
        values["web_token"] = env["SPOOL_WEB_TOKEN"]
    return Settings(config_path=path, **values)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def settings_from_table(data: Mapping[str, Any], path: Path | None) -> dict[str, Any]:
    """Turn the parsed TOML into Settings keyword arguments, checking every key and type."""
    where = str(path) if path else "config"
    check_keys(data, TOP_KEYS, where)
    values: dict[str, Any] = {}
    if "root" in data:
        values["root"] = Path(want(data, "root", str, where))
    if "tasks" in data:
        tasks = want(data, "tasks", list, where)
        if not all(isinstance(t, str) and t for t in tasks):
            raise ConfigError(f"{where}: tasks must be a list of module names")
        values["tasks"] = tuple(tasks)
    defaults = table(data, "defaults", DEFAULTS_KEYS, where)
    workers = table(data, "workers", WORKERS_KEYS, where)
    log = table(data, "log", LOG_KEYS, where)
    checks: list[tuple[str, str, type | None]] = [  # None: a time span (5m, 1h or seconds)
        ("max_retries", "max_retries", int),
        ("timeout", "timeout_seconds", None),
        ("retry_backoff", "retry_backoff_seconds", None),
        ("retry_backoff_max", "retry_backoff_max_seconds", None),
        ("retry_jitter", "retry_jitter", bool),
        ("max_file_bytes", "max_file_bytes", int),
        ("max_lost", "max_lost", int),
    ]
    values.update(checked(defaults, checks, f"{where} [defaults]"))
    if values.get("max_lost") == 0:
        raise ConfigError(f"{where} [defaults]: max_lost must be at least 1")
    worker_checks: list[tuple[str, str, type | None]] = [
        ("processes", "processes", int),
        ("rescan_seconds", "rescan_seconds", None),
        ("recover_seconds", "recover_seconds", None),
        ("unknown_task_grace", "unknown_task_grace_seconds", None),
        ("output_bytes", "output_limit_bytes", int),
        ("claim_batch", "claim_batch", int),
    ]
    values.update(checked(workers, worker_checks, f"{where} [workers]"))
    if values.get("claim_batch", 1) < 1:
        raise ConfigError(f"{where} [workers]: claim_batch must be at least 1")
    if "queues" in workers:
        queues = want(workers, "queues", list, f"{where} [workers]")
        if not all(isinstance(q, str) for q in queues):
            raise ConfigError(f"{where} [workers]: queues must be a list of queue names")
        values["queues"] = tuple(queues)
    if "format" in log:
        fmt = want(log, "format", str, f"{where} [log]")
        if fmt not in ("text", "json"):
            raise ConfigError(f"{where} [log]: format must be 'text' or 'json', not {fmt!r}")
        values["log_format"] = fmt
    if "level" in log:
        values["log_level"] = want(log, "level", str, f"{where} [log]").upper()
    retention = table(data, "retention", RETENTION_KEYS, where)
    ages = {}
    for state, text in retention.items():
        try:
            ages[state] = parse_duration(text)
        except ValueError as exc:
            raise ConfigError(f"{where} [retention]: {state}: {exc}") from None
    values["retention"] = ages
    values.update(web_values(table(data, "web", WEB_KEYS, where), f"{where} [web]"))
    values.update(cluster_values(table(data, "cluster", CLUSTER_KEYS, where), f"{where} [cluster]"))
    if "queues" in data:
        values["queue_rates"] = queue_rates(want(data, "queues", dict, where), f"{where} [queues]")
    if "schedule" in data:
        values["schedule"] = want(data, "schedule", dict, where)
    values["notify"] = parse_notify(data.get("notify"), where)
    values["mqtt_intake"] = parse_mqtt_intake(data.get("mqtt_intake"), where)
    return values


def web_values(web: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The [web] table (spool web): host, port, token, max_body."""
    values: dict[str, Any] = {}
    if "host" in web:
        values["web_host"] = want(web, "host", str, where)
    if "port" in web:
        port = want(web, "port", int, where)
        if not 0 < port < 65536:
            raise ConfigError(f"{where}: port must be from 1 to 65535, not {port}")
        values["web_port"] = port
    if "token" in web:
        token = want(web, "token", str, where)
        values["web_token"] = token or None
    if "max_body" in web:
        max_body = want(web, "max_body", int, where)
        if max_body < 1:
            raise ConfigError(f"{where}: max_body must be a positive number of bytes")
        values["web_max_body"] = max_body
    return values


def cluster_values(cluster: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The [cluster] table: shared (true/false/"auto"), poll_interval, lease."""
    values: dict[str, Any] = {}
    if "shared" in cluster:
        shared = cluster["shared"]
        if shared not in (True, False, "auto"):
            raise ConfigError(f'{where}: shared must be true, false or "auto", not {shared!r}')
        values["shared"] = None if shared == "auto" else shared
    for key, name, low in (("poll_interval", "poll_seconds", 0.01), ("lease", "lease_seconds", 3)):
        if key in cluster:
            try:
                seconds = parse_duration(cluster[key])
            except ValueError as exc:
                raise ConfigError(f"{where}: {key}: {exc}") from None
            if seconds < low:
                raise ConfigError(f"{where}: {key} must be at least {low:g}s")
            values[name] = seconds
    return values


def queue_rates(queues: Mapping[str, Any], where: str) -> dict[str, str]:
    """The [queues.NAME] tables: each queue's `rate` (see workflows.rates)."""
    rates: dict[str, str] = {}
    for name, entry in queues.items():
        if not QUEUE_RE.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is no queue name ([A-Za-z0-9_-]{{1,64}})")
        settings = as_table(entry, QUEUE_KEYS, f"{where[:-1]}.{name}]")
        if "rate" in settings:
            try:
                parse_rate(settings["rate"])
            except FieldError as exc:
                raise ConfigError(f"{where[:-1]}.{name}]: {exc}") from None
            rates[name] = settings["rate"]
    return rates


def table(data: Mapping[str, Any], name: str, allowed: set[str], where: str) -> Mapping[str, Any]:
    return as_table(data.get(name, {}), allowed, f"{where} [{name}]")


def checked(
    data: Mapping[str, Any], checks: list[tuple[str, str, type | None]], where: str
) -> dict[str, Any]:
    """The keys of `checks` present in `data`, type-checked and not negative (kind None: a
    time span, "90s", "5m", "1h", "7d" or a number of seconds)."""
    values: dict[str, Any] = {}
    for key, name, kind in checks:
        if key in data:
            value = duration(data, key, where) if kind is None else want(data, key, kind, where)
            values[name] = non_negative(value, key, where)
    return values


def non_negative(value: Any, key: str, where: str) -> Any:
    if not isinstance(value, bool) and value < 0:
        raise ConfigError(f"{where}: {key} must not be negative")
    return value
