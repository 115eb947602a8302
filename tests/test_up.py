"""`spool up`'s dashboard token (no supervisord here: see test_supervisor.py for a real run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spool.config import Settings
from spool.deploy.up import web_token
from spool.errors import SpoolError


def test_the_first_spool_up_makes_a_token_only_its_owner_reads_and_later_ones_keep_it(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    previous = os.umask(0o002)  # (a group-friendly umask must not widen the token's mode)
    try:
        first = web_token(Settings(), var, {})
    finally:
        os.umask(previous)
    assert first.file == var / "web-token" and len(first.value) >= 32
    assert (var / "web-token").stat().st_mode & 0o777 == 0o600
    assert web_token(Settings(), var, {}).value == first.value


def test_a_token_file_others_can_read_is_made_private_again(tmp_path: Path) -> None:
    (tmp_path / "web-token").write_text("s3cret-token\n")
    (tmp_path / "web-token").chmod(0o644)
    assert web_token(Settings(), tmp_path, {}).value == "s3cret-token"
    assert (tmp_path / "web-token").stat().st_mode & 0o777 == 0o600


def test_spool_web_token_wins_over_the_config_and_the_config_over_the_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "web-token").write_text("from-file\n")
    configured = Settings(web_token="from-config")
    assert web_token(configured, tmp_path, {"SPOOL_WEB_TOKEN": "from-env"}).value == "from-env"
    from_config = web_token(configured, tmp_path, {})
    assert from_config.value == "from-config" and from_config.file is None
    assert web_token(Settings(), tmp_path, {}).value == "from-file"


def test_a_token_file_that_is_no_token_is_one_error_saying_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "web-token").write_text("two words\n")
    with pytest.raises(SpoolError, match="delete it to get a new one"):
        web_token(Settings(), tmp_path, {})
