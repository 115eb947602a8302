"""The command line, in-process with click's CliRunner: output, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from spool import Spool
from spool.cli import cli
from tests.conftest import PROJECT_DIR, TEST_CONFIG, names, run_burst, spool_command


@pytest.fixture
def invoke(spool_root: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
        argv = ["--root", str(spool_root), "--config", str(TEST_CONFIG), *args]
        return runner.invoke(cli, argv, input=stdin, catch_exceptions=False)

    return run


def read_incoming(spool_root: Path, queue: str = "default") -> list[dict[str, object]]:
    incoming = spool_root / queue / "incoming"
    return [json.loads((incoming / n).read_bytes()) for n in names(incoming)]


def test_enqueue_prints_the_id_and_parses_args_as_json_when_they_parse(
    invoke, spool_root: Path
) -> None:
    result = invoke("enqueue", "echo", "1", '{"a": [2]}', "hello", "true", "007")
    assert result.exit_code == 0, result.output
    [task] = read_incoming(spool_root)
    assert result.stdout.strip() == task["id"]
    assert task["args"] == [1, {"a": [2]}, "hello", True, "007"]


def test_enqueue_takes_every_option(invoke, spool_root: Path) -> None:
    result = invoke(
        "enqueue",
        "send_email",
        "a@b.c",
        "--kwargs",
        '{"subject": "hi"}',
        "--queue",
        "mail",
        "--priority",
        "7",
        "--max-retries",
        "2",
        "--timeout",
        "9.5",
        "--unique",
        "k1",
        "--id",
        "mail-1",
    )
    assert result.exit_code == 0, result.output
    [task] = read_incoming(spool_root, "mail")
    assert task["kwargs"] == {"subject": "hi"} and task["id"] == "mail-1"
    assert (task["priority"], task["max_retries"], task["timeout"]) == (7, 2, 9.5)
    assert task["unique_key"] == "k1"


def test_enqueue_with_delay_or_at_lands_in_delayed(invoke, spool_root: Path) -> None:
    assert invoke("enqueue", "echo", "--delay", "60").exit_code == 0
    assert invoke("enqueue", "echo", "--at", "2999-01-01T00:00:00Z").exit_code == 0
    assert invoke("enqueue", "echo", "--at", "32503680000").exit_code == 0
    assert len(names(spool_root / "default" / "delayed")) == 3


def test_time_span_options_take_durations(invoke, spool_root: Path) -> None:
    before = time.time()
    result = invoke("enqueue", "echo", "--delay", "1h", "--timeout", "5m")
    assert result.exit_code == 0, result.output
    [name] = names(spool_root / "default" / "delayed")
    due = int(name.split("@", 1)[0]) / 1_000_000
    assert before + 3600 <= due <= time.time() + 3600
    task = json.loads((spool_root / "default" / "delayed" / name).read_bytes())
    assert task["timeout"] == 300.0
    waited = invoke("wait", result.stdout.strip(), "--timeout", "250ms")
    assert waited.exit_code == 3


@pytest.mark.parametrize(
    ("args", "names_option"),
    [
        (["enqueue", "add", "--kwargs", "{"], "--kwargs"),
        (["enqueue", "add", "--kwargs", "[1]"], "--kwargs"),
        (["enqueue", "add", "--queue", "../etc"], "--queue"),
        (["enqueue", "add", "--priority", "10"], "--priority"),
        (["enqueue", "add", "--at", "someday"], "--at"),
        (["enqueue", "add", "--delay", "1", "--at", "2030-01-01"], "--delay"),
        (["enqueue", "add", "--delay", "soon"], "--delay"),
        (["enqueue", "add", "--timeout", "0s"], "--timeout"),
        (["wait", "some-id", "--timeout", "a while"], "--timeout"),
        (["enqueue", "add", "--id", "../x"], "id"),
        (["enqueue"], "TASK"),
    ],
)
def test_bad_enqueue_input_is_a_one_line_usage_error(
    invoke, spool_root: Path, args: list[str], names_option: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert names_option in result.stderr
    assert "Traceback" not in result.output
    assert names(spool_root / "default" / "incoming") == []


def test_enqueue_from_jsonl_enqueues_every_line(invoke, spool_root: Path, tmp_path: Path) -> None:
    lines = [json.dumps({"task": "echo", "args": [i]}) for i in range(25)]
    source = tmp_path / "tasks.jsonl"
    source.write_text("\n".join(lines) + "\n\n")
    result = invoke("enqueue", "--from", str(source))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.split()) == 25
    assert sorted(t["args"][0] for t in read_incoming(spool_root)) == list(range(25))


def test_enqueue_from_stdin(invoke, spool_root: Path) -> None:
    result = invoke(
        "enqueue", "--from", "-", stdin='{"task": "echo"}\n{"task": "add", "queue": "q2"}\n'
    )
    assert result.exit_code == 0, result.output
    assert len(read_incoming(spool_root)) == 1 and len(read_incoming(spool_root, "q2")) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"task": "echo"}\nnot json\n', "line 2"),
        ('{"task": "echo"}\n[1]\n', "line 2"),
        ('{"task": "echo"}\n\n{"task": "echo", "priority": 99}\n', "line 3"),
    ],
)
def test_enqueue_from_with_a_bad_line_names_it_and_writes_nothing(
    invoke, spool_root: Path, tmp_path: Path, content: str, message: str
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(content)
    result = invoke("enqueue", "--from", str(source))
    assert result.exit_code == 2
    assert message in result.stderr and "--from" in result.stderr
    assert read_incoming(spool_root) == []


def test_bad_config_is_a_one_line_error(spool_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults]\ntimeout = 'long'\n")
    result = CliRunner().invoke(cli, ["--root", str(spool_root), "--config", str(bad), "status"])
    assert result.exit_code == 2
    assert "timeout: not a duration: 'long'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_status_counts_tasks_per_state(invoke, app: Spool) -> None:
    app.enqueue("echo")
    app.enqueue("echo", delay=600)
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    counts = data["queues"]["default"]
    assert (counts["incoming"], counts["delayed"], counts["done"], counts["failed"]) == (1, 1, 0, 0)
    assert counts["oldest_waiting_seconds"] >= 0
    assert data["workers"] == []
    table = invoke("status")
    assert table.exit_code == 0 and "default" in table.stdout and "incoming" in table.stdout


def test_show_and_wait_report_a_finished_task(invoke, app: Spool, spool_root: Path) -> None:
    task_id = app.enqueue("add", args=[20, 22])
    assert json.loads(invoke("show", task_id, "--json").stdout)["state"] == "incoming"
    assert run_burst(spool_root).returncode == 0
    shown = json.loads(invoke("show", task_id, "--json").stdout)
    assert shown["state"] == "done" and shown["result"] == 42 and shown["attempts"] == 1
    waited = invoke("wait", task_id, "--timeout", "5")
    assert waited.exit_code == 0 and json.loads(waited.stdout) == 42


def test_wait_exits_1_for_a_failed_task(invoke, app: Spool, spool_root: Path) -> None:
    task_id = app.enqueue("fail", args=["on purpose"], max_retries=0)
    assert run_burst(spool_root).returncode == 0
    result = invoke("wait", task_id, "--timeout", "5")
    assert result.exit_code == 1
    assert "on purpose" in result.stderr


def test_wait_exits_3_when_the_task_does_not_finish_in_time(invoke, app: Spool) -> None:
    task_id = app.enqueue("echo")
    result = invoke("wait", task_id, "--timeout", "0.2")
    assert result.exit_code == 3
    assert "did not finish" in result.stderr


def test_show_and_wait_of_an_unknown_id_say_so(invoke) -> None:
    for command in ("show", "wait"):
        result = invoke(command, "no-such-task")
        assert result.exit_code == 1
        assert "unknown task id" in result.stderr


def test_every_command_has_help(invoke) -> None:
    for command in ("enqueue", "worker", "status", "show", "wait", "up", "supervisor-config"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout


def test_wait_for_several_tasks_prints_one_json_line_each(invoke, app: Spool, spool_root) -> None:  # type: ignore[no-untyped-def]
    good = app.enqueue("add", args=[1, 1])
    bad = app.enqueue("fail", args=["nope"], max_retries=0)
    assert run_burst(spool_root).returncode == 0
    result = invoke("wait", good, bad, "--timeout", "5")
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {"id": good, "state": "done", "result": 2}
    assert lines[1]["id"] == bad and lines[1]["state"] == "failed"
    assert lines[1]["error"]["message"] == "nope"


def test_wait_for_many_tasks_returns_with_the_drain_in_the_order_given(
    app: Spool, spool_root: Path
) -> None:
    # Broke once: 1,000 ids took 6.8 s for a queue that drained in 2.7 s (a watch and a listing
    # of every directory per id).
    assert run_burst(spool_root).returncode == 0  # (publishes the tasks)
    ids = app.enqueue_many([{"task": "echo", "args": [n]} for n in range(1000)])
    ids.reverse()  # the order given is not the order they finish in
    waiter = subprocess.Popen(
        spool_command(spool_root, "wait", *ids, "--timeout", "120"),
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        text=True,
    )
    workers = [subprocess.Popen(spool_command(spool_root, "worker", "--burst"), cwd=PROJECT_DIR)]
    workers.append(
        subprocess.Popen(spool_command(spool_root, "worker", "--burst"), cwd=PROJECT_DIR)
    )
    assert all(worker.wait(timeout=120) == 0 for worker in workers)
    drained = time.monotonic()
    output, _ = waiter.communicate(timeout=120)
    assert time.monotonic() - drained < 1.5  # (it took 2.5 to 4 s more before)
    assert waiter.returncode == 0
    lines = [json.loads(line) for line in output.splitlines()]
    assert [line["id"] for line in lines] == ids
    assert lines[0] == {"id": ids[0], "state": "done", "result": 999}


def test_wait_for_several_tasks_names_the_unknown_and_the_unfinished(
    invoke, app: Spool, spool_root: Path
) -> None:
    done = app.enqueue("add", args=[2, 3])
    assert run_burst(spool_root).returncode == 0
    later = app.enqueue("echo", delay=600)
    result = invoke("wait", later, "no-such-task", done, "--timeout", "0.3")
    assert result.exit_code == 3
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {"id": later, "state": "waiting"},
        {"id": "no-such-task", "state": "unknown"},
        {"id": done, "state": "done", "result": 5},
    ]
    assert "unknown task id: no-such-task" in result.stderr and "did not finish" in result.stderr
