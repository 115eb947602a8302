"""What a user can get wrong at the command line is one line on stderr, never a traceback:
exit 2 for a bad value (a root that is a file), 1 for an operation that failed (a root this
user cannot read, an unknown id, a port already in use)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from spool.cli import cli
from tests.conftest import PROJECT_DIR, TEST_CONFIG

# Commands that look at or write to the root (the worker drains and exits: --burst).
ROOT_COMMANDS = [
    ("enqueue", "echo", "1"),
    ("status",),
    ("worker", "--burst"),
    ("ls", "incoming"),
    ("show", "some-id"),
    ("retry", "some-id"),
    ("cancel", "some-id"),
    ("wait", "some-id", "--timeout", "0"),
    ("purge", "done", "--yes"),
    ("metrics",),
    ("pause", "q", "--create"),
    ("top", "--once"),
]
NOBODY = 65534


def invoke(root: Path, *args: str) -> Result:
    argv = ["--root", str(root), "--config", str(TEST_CONFIG), *args]
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


@pytest.mark.parametrize("command", ROOT_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("where", ["file", "below a file"])
def test_a_root_that_is_a_file_or_lies_below_one_is_one_line_and_exit_2(
    tmp_path: Path, command: tuple[str, ...], where: str
) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    root = a_file if where == "file" else a_file / "spool"
    result = invoke(root, *command)
    assert result.exit_code == 2, result.output
    assert lines(result.output) == [f"Error: root {root}: {a_file} is not a directory"]


def test_a_file_where_a_queue_directory_must_be_is_one_line_and_exit_1(spool_root: Path) -> None:
    (spool_root / "default").write_text("")
    result = invoke(spool_root, "enqueue", "echo", "1")
    assert result.exit_code == 1
    assert lines(result.output) == [f"Error: not a directory: {spool_root / 'default' / 'tmp'}"]


# ---- a root this user cannot read ----------------------------------------------------------


def can_run_as_nobody() -> str | None:
    """Why the command cannot run as another user here (None: it can)."""
    if os.geteuid() != 0:
        return "not root: cannot run a command as another user"
    if shutil.which("setpriv") is None:
        return "no setpriv (util-linux) to run a command as another user"
    probe = subprocess.run(
        [*as_nobody(), sys.executable, "-c", "import spool"],
        cwd=PROJECT_DIR,
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"user nobody cannot run this python: {probe.stderr.decode().strip()}"
    return None


def as_nobody() -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture
def root_of_another_user() -> Iterator[Path]:
    """A spool root (with a queue) only root can read, in a directory anyone can traverse."""
    reason = can_run_as_nobody()
    if reason is not None:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="spool-perm-", dir="/tmp"))
    try:
        base.chmod(0o711)
        root = base / "spool"
        (root / "default" / "incoming").mkdir(parents=True)
        root.chmod(0o700)
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("command", ROOT_COMMANDS, ids=" ".join)
def test_a_root_this_user_cannot_read_is_one_line_and_exit_1(
    root_of_another_user: Path, command: tuple[str, ...]
) -> None:
    argv = [sys.executable, "-m", "spool", "--root", str(root_of_another_user)]
    result = subprocess.run(
        [*as_nobody(), *argv, "--config", str(TEST_CONFIG), *command],
        cwd=PROJECT_DIR,
        env={**os.environ, "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert lines(result.stderr) == [f"Error: permission denied: {root_of_another_user}"]


# ---- retry and cancel of unknown ids -------------------------------------------------------


def test_retry_of_an_unknown_id_is_one_error_line_and_exit_1(spool_root: Path) -> None:
    # Broke once: "error: unknown task id: nope" (the only lower-case error: of the CLI),
    # then "retried 0 task(s)".
    result = invoke(spool_root, "retry", "nope")
    assert result.exit_code == 1
    assert lines(result.output) == ["Error: unknown task id: nope"]


def test_cancel_of_an_unknown_id_is_one_error_line_and_exit_1(spool_root: Path) -> None:
    result = invoke(spool_root, "cancel", "nope")
    assert result.exit_code == 1
    assert lines(result.output) == ["Error: unknown task id: nope"]


# ---- spool web -----------------------------------------------------------------------------


def test_web_on_a_port_in_use_is_one_line_and_exit_1_without_announcing_an_address(
    spool_root: Path,
) -> None:
    # Broke once: it printed "spool web: http://127.0.0.1:PORT/", then uvicorn's log, and
    # exited 3 (the code of a timeout).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke(spool_root, "web", "--port", str(port))
    assert result.exit_code == 1
    assert lines(result.output) == [
        f"Error: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
