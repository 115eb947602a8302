"""Supervisor integration (being written): render program blocks, run `spool up`."""

from __future__ import annotations

from spool.config import Settings
from spool.errors import SpoolError


def run_up(settings: Settings, workers: int | None) -> int:
    raise SpoolError("spool up is not available yet")


def render_program_block(settings: Settings, workers: int | None, user: str | None) -> str:
    raise SpoolError("spool supervisor-config is not available yet")
