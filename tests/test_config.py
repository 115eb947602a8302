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
        ("[defaults]\ntimeout = true", "timeout must be"),
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
