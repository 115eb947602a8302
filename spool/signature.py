"""A handler's parameters as data, and whether a task's arguments bind to them.

The handler process describes each task's signature as plain JSON (names, kinds, which have
defaults); the task manifest carries it to producers, and the worker checks each claimed task
against it. Binding follows `inspect.Signature.bind`: a missing required argument, an
unexpected keyword or too many positionals do not bind. Types and values are not checked.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from spool.envelope import JSON

KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional_only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional_or_keyword",
    inspect.Parameter.VAR_POSITIONAL: "var_positional",
    inspect.Parameter.KEYWORD_ONLY: "keyword_only",
    inspect.Parameter.VAR_KEYWORD: "var_keyword",
}
BY_NAME = {name: kind for kind, name in KINDS.items()}


def params_of(fn: Callable[..., Any]) -> list[dict[str, JSON]] | None:
    """The handler's parameters: [{name, kind, default}]; None when Python cannot tell."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None
    return [
        {
            "name": p.name,
            "kind": KINDS[p.kind],
            "default": p.default is not inspect.Parameter.empty,
        }
        for p in signature.parameters.values()
    ]


def binding_error(params: JSON, args: Sequence[JSON], kwargs: Mapping[str, JSON]) -> str | None:
    """Why these arguments do not bind to the described parameters; None when they do."""
    signature = signature_of(params_key(params))
    if signature is None:
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return None


def render(params: JSON) -> str:
    """The parameters as Python would show them: (to, subject=..., *, cc=...)."""
    signature = signature_of(params_key(params))
    return "(...)" if signature is None else str(signature).replace("=None", "=...")


def params_key(params: JSON) -> tuple[tuple[str, str, bool], ...] | None:
    """A hashable form of described parameters; None when they are missing or malformed."""
    if not isinstance(params, list):
        return None
    key = []
    for p in params:
        if not isinstance(p, dict) or p.get("kind") not in BY_NAME:
            return None
        if not isinstance(p.get("name"), str):
            return None
        key.append((p["name"], p["kind"], bool(p.get("default"))))
    return tuple(key)


@lru_cache(maxsize=1024)
def signature_of(key: tuple[tuple[str, str, bool], ...] | None) -> inspect.Signature | None:
    if key is None:
        return None
    try:
        return inspect.Signature(
            [
                inspect.Parameter(
                    name,
                    BY_NAME[kind],
                    default=None if has_default else inspect.Parameter.empty,
                )
                for name, kind, has_default in key
            ]
        )
    except ValueError:  # an impossible order or name: check nothing rather than refuse
        return None
