"""Settings: precedence of flags, environment, file and defaults; clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from spool.config import load_settings
from spool.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_any_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.root == Path("var/spool")
    assert settings.config_path is None
    assert settings.max_retries == 3


def test_conf_spool_toml_in_the_current_directory_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf" / "spool.toml", 'root = "from-file"\n[defaults]\nmax_retries = 7\n')
    settings = load_settings(env={})
    assert settings.root == Path("from-file") and settings.max_retries == 7


def test_root_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", 'root = "file"\n')
    assert load_settings(None, str(config), env={}).root == Path("file")
    env = {"SPOOL_ROOT": "env"}
    assert load_settings(None, str(config), env=env).root == Path("env")
    assert load_settings("flag", str(config), env=env).root == Path("flag")


def test_config_flag_beats_spool_config_environment(tmp_path: Path) -> None:
    a = write(tmp_path / "a.toml", 'root = "a"\n')
    b = write(tmp_path / "b.toml", 'root = "b"\n')
    assert load_settings(env={"SPOOL_CONFIG": str(a)}).root == Path("a")
    assert load_settings(None, str(b), env={"SPOOL_CONFIG": str(a)}).root == Path("b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("root = ", "not valid TOML"),
        ("rooot = 'x'", "unknown key 'rooot'"),
        ("[defaults]\nmax_retries = 'three'", "max_retries must be int"),
        ("[defaults]\nmax_retries = -1", "must not be negative"),
        ("[defaults]\ntimeout = true", "timeout: not a duration"),
        ("[defaults]\ntimeout = 'soon'", "timeout: not a duration: 'soon'"),
        ("[defaults]\ntimeout = '-5m'", "timeout: not a duration"),
        ("[workers]\nqueues = 'mail'", "queues must be"),
        ("tasks = 'examples.tasks'", "tasks must be"),
        ("[log]\nformat = 'xml'", "format must be"),
    ],
)
def test_bad_config_file_gives_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(None, str(config), env={})
    assert str(config) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(None, str(tmp_path / "nope.toml"), env={})


def test_max_lost_is_read_from_defaults_and_must_be_at_least_one(tmp_path: Path) -> None:
    unset = write(tmp_path / "unset.toml", "[defaults]\nmax_retries = 1\n")
    assert load_settings(config_flag=str(unset), env={}).max_lost == 3
    good = write(tmp_path / "good.toml", "[defaults]\nmax_lost = 5\n")
    assert load_settings(config_flag=str(good), env={}).max_lost == 5
    bad = write(tmp_path / "bad.toml", "[defaults]\nmax_lost = 0\n")
    with pytest.raises(ConfigError, match="max_lost must be at least 1"):
        load_settings(config_flag=str(bad), env={})


def test_every_time_span_of_the_config_takes_a_duration_or_seconds(tmp_path: Path) -> None:
    text = (
        '[defaults]\ntimeout = "5m"\nretry_backoff = "90s"\nretry_backoff_max = "1h"\n'
        '[workers]\nrescan_seconds = "250ms"\nrecover_seconds = 3\nunknown_task_grace = "1d"\n'
        '[notify]\nsinks = ["webhook"]\n[notify.webhook]\nurl = "http://x/"\ntimeout = "2m"\n'
    )
    settings = load_settings(None, str(write(tmp_path / "c.toml", text)), env={})
    assert settings.timeout_seconds == 300.0
    assert (settings.retry_backoff_seconds, settings.retry_backoff_max_seconds) == (90.0, 3600.0)
    assert (settings.rescan_seconds, settings.recover_seconds) == (0.25, 3)
    assert settings.unknown_task_grace_seconds == 86400.0
    assert settings.notify.webhook is not None and settings.notify.webhook.timeout == 120.0
