"""Checks of the config file's TOML tables shared by every section's parser: a table with
known keys only, a value of the expected type, a time span; each failure a ConfigError naming
where. `parse_duration` is the one reader of time spans (config, command-line options, API);
`split_span` cuts one into units for people (`spool ls`, the dashboard)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from spool.errors import ConfigError


def check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def as_table(data: Any, allowed: set[str], where: str) -> Mapping[str, Any]:
    """`data` if it is a table of allowed keys only."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a table")
    check_keys(data, allowed, where)
    return data


def want(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`data[key]` if it is of `kind` (a bool is no number)."""
    value = data[key]
    bad_bool = isinstance(value, bool) and kind is not bool
    if bad_bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: {key} must be {names}, not {type(value).__name__}")
    return value


DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: object) -> float:
    """Seconds from 30s, 5m, 1h, 7d, 2w, 250ms or a plain number. Raises: ValueError."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (match := DURATION_RE.fullmatch(value)):
        return float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]
    raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 5m, 1h, 7d)")


def split_span(seconds: float) -> tuple[int, str, int, str]:
    """A span of a minute or more cut into its two largest units (parse_duration's), the
    smaller one whole: 307.9 -> (5, "m", 7, "s"); 7500 -> (2, "h", 5, "m"); for people."""
    whole = int(seconds)
    big, small = ("d", "h") if whole >= 86400 else ("h", "m") if whole >= 3600 else ("m", "s")
    size, small_size = int(DURATION_UNITS[big]), int(DURATION_UNITS[small])
    return whole // size, big, whole % size // small_size, small


def duration(data: Mapping[str, Any], key: str, where: str) -> float:
    """`data[key]` as seconds: a number or a string such as "90s", "5m", "1h", "7d"."""
    try:
        return parse_duration(data[key])
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None
