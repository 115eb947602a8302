"""[retention]: workers delete finished tasks past their age, in small steps."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from spool.config import load_settings
from spool.errors import ConfigError
from spool.retention import Retention
from tests.conftest import TESTS_DIR, names, wait_until


def finished_files(spool_root: Path, state: str, ages: dict[str, float]) -> Path:
    directory = spool_root / "default" / state
    directory.mkdir(parents=True, exist_ok=True)
    for name, age in ages.items():
        (directory / name).write_text("{}")
        os.utime(directory / name, (time.time() - age, time.time() - age))
    return directory


def test_a_step_deletes_only_what_is_older_than_its_states_age(spool_root: Path) -> None:
    done = finished_files(spool_root, "done", {"old.json": 8 * 86400, "new.json": 60})
    failed = finished_files(
        spool_root, "failed", {"old.json": 8 * 86400, "x.error.json": 8 * 86400}
    )
    deleted = Retention(spool_root, {"done": 7 * 86400}).step(["default"])
    assert deleted == {("default", "done"): 1}
    assert names(done) == ["new.json"]
    assert names(failed) == ["old.json", "x.error.json"]  # no age for failed: kept


def test_a_big_directory_is_walked_in_bounded_steps(spool_root: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("spool.retention.STEP_ENTRIES", 10)
    done = finished_files(spool_root, "done", {f"t{n}.json": 3600 for n in range(25)})
    retention = Retention(spool_root, {"done": 60})
    steps = [retention.step(["default"]).get(("default", "done"), 0) for _ in range(4)]
    assert steps == [10, 10, 5, 0]
    assert names(done) == []


def test_a_resident_worker_applies_the_configured_retention(
    spool_root: Path, tmp_path: Path, start_worker
) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "spool.toml"
    config.write_text((TESTS_DIR / "spool.toml").read_text() + '\n[retention]\ndone = "1h"\n')
    done = finished_files(spool_root, "done", {"old.json": 7200, "new.json": 10})
    start_worker("--queue", "default", config=str(config))
    wait_until(lambda: names(done) == ["new.json"], timeout=15)


def test_a_bad_retention_age_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[retention]\ndone = "a week"\n')
    with pytest.raises(ConfigError, match=r"\[retention\]: done"):
        load_settings(None, str(config), env={})


def test_a_cancelled_tasks_marker_goes_with_it_and_is_counted_apart(spool_root: Path) -> None:
    failed = finished_files(
        spool_root, "failed", {"c.json": 8 * 86400, ".c.cancelled": 8 * 86400, "f.json": 60}
    )
    deleted = Retention(spool_root, {"failed": 7 * 86400}).step(["default"])
    assert deleted == {("default", "failed"): 1, ("default", "cancelled"): 1}
    assert sorted(os.listdir(failed)) == ["f.json"]
