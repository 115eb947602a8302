"""Checks of the config file's TOML tables shared by every section's parser: a table with
known keys only, a value of the expected type; each failure a ConfigError naming where."""

from __future__ import annotations

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
