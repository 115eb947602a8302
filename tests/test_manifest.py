"""The task manifest: published by workers, read by every producer (routing, refusal at the
door), and by workers that meet a task they do not know while a deploy is under way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from spool import Spool
from spool.errors import BadArguments, UnknownTaskName
from spool.layout import queue_dirs
from spool.manifest import Catalog, Manifest, prune, publish, read_all, unknown_fate
from spool.registry import TaskOptions
from spool.signature import binding_error, params_of, render
from tests.conftest import PROJECT_DIR, TEST_CONFIG, drop_into, names, spool_command, wait_until
from tests.webserver import WebServer


def published(root: Path) -> bool:
    return any(m.is_worker and "send_mail" in m.tasks for m in read_all(root))


def cli(root: Path, *args: str, cwd: Path = PROJECT_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        spool_command(root, *args), cwd=cwd, capture_output=True, text=True, timeout=60
    )


def incoming_files(root: Path) -> list[Path]:
    return [p for p in root.glob("*/incoming/*") if not p.name.startswith(".")]


# ---- the handler's parameters ------------------------------------------------------------


def handler(to: str, subject: str = "", *rest: str, cc: str, **extra: str) -> None: ...


def test_a_signature_round_trips_through_json_and_binds_like_python() -> None:
    params = json.loads(json.dumps(params_of(handler)))
    assert render(params) == "(to, subject=..., *rest, cc, **extra)"
    assert binding_error(params, ["a@b.c"], {"cc": "x"}) is None
    assert binding_error(params, [], {"cc": "x"}) == "missing a required argument: 'to'"
    assert "'cc'" in (binding_error(params, ["a@b.c"], {}) or "")


def test_arguments_are_not_checked_against_a_missing_or_malformed_signature() -> None:
    assert binding_error(None, [1, 2, 3], {"x": 1}) is None
    assert binding_error([{"name": 3, "kind": "?"}], [1], {}) is None


# ---- what the manifest decides -----------------------------------------------------------


def manifest(publisher: str, at: float, *names_: str, worker: bool = True) -> Manifest:
    return Manifest(publisher, at, {n: TaskOptions(n, queue="q") for n in names_}, is_worker=worker)


def test_a_task_known_by_a_live_worker_is_left_for_it() -> None:
    catalog = Catalog.of([manifest("new", 0.0, "b")])
    wait = unknown_fate(catalog, "b", lambda w: w == "new", 10_000.0, 600.0, 10.0)
    assert wait == 10.0


def test_a_task_known_only_by_a_recent_manifest_is_held_until_the_grace_ends() -> None:
    catalog = Catalog.of([manifest("gone", 1000.0, "b")])
    assert unknown_fate(catalog, "b", lambda w: False, 1595.0, 600.0, 10.0) == 5.0
    assert unknown_fate(catalog, "b", lambda w: False, 1601.0, 600.0, 10.0) is None


def test_a_task_no_manifest_knows_is_rejected() -> None:
    catalog = Catalog.of([manifest("w", 0.0, "a")])
    assert unknown_fate(catalog, "b", lambda w: True, 1.0, 600.0, 10.0) is None


def test_pruning_keeps_live_workers_recent_manifests_and_the_newest(tmp_path: Path) -> None:
    for name, at in (("dead-old", 0.0), ("live-old", 0.0), ("dead-recent", 900.0)):
        publish(tmp_path, name, {"a": TaskOptions("a")}, at, is_worker=True, is_live=lambda w: True,
                grace_seconds=1e9)  # fmt: skip
    prune(tmp_path, 1000.0, lambda w: w.startswith("live"), 600.0)
    assert sorted(m.publisher for m in read_all(tmp_path)) == ["dead-recent", "live-old"]
    prune(tmp_path, 5000.0, lambda w: False, 600.0)
    assert [m.publisher for m in read_all(tmp_path)] == ["dead-recent"]  # the newest stays


def test_the_newest_publication_of_a_name_routes_it() -> None:
    old = Manifest("a", 1.0, {"t": TaskOptions("t", queue="old")})
    new = Manifest("b", 2.0, {"t": TaskOptions("t", queue="new")})
    assert Catalog.of([new, old]).queue_of("t") == "new"


# ---- producers ---------------------------------------------------------------------------


@pytest.fixture
def mail_worker(spool_root: Path, start_worker: Any) -> Any:
    """A worker serving only queue mail, with its tasks published."""
    proc = start_worker("-q", "mail")
    wait_until(lambda: published(spool_root), timeout=30)
    return proc


def test_cli_enqueue_routes_to_the_declared_queue_and_a_mail_worker_runs_it(
    spool_root: Path, mail_worker: Any
) -> None:
    result = cli(spool_root, "enqueue", "send_mail", "a@b.c", "--kwargs", '{"subject": "hi"}')
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    waited = cli(spool_root, "wait", task_id, "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout) == "to a@b.c: hi"
    assert names(queue_dirs(spool_root, "mail").done) == [f"{task_id}.json"]


def test_every_producer_routes_to_the_declared_queue(
    spool_root: Path, tmp_path: Path, mail_worker: Any
) -> None:
    app = Spool(root=spool_root)
    ids = [app.enqueue("send_mail", ["api@b.c"])]
    ids += app.enqueue_many([{"task": "send_mail", "args": ["many@b.c"]}])
    lines = tmp_path / "tasks.jsonl"
    lines.write_text(json.dumps({"task": "send_mail", "args": ["from@b.c"]}) + "\n")
    from_file = cli(spool_root, "enqueue", "--from", str(lines))
    assert from_file.returncode == 0, from_file.stderr
    ids.append(from_file.stdout.split()[0])
    with WebServer(spool_root, "t0ken", tmp_path / "web.log") as web:
        answer = httpx.post(
            f"{web.url}/api/tasks",
            json={"task": "send_mail", "args": ["http@b.c"]},
            headers={"Authorization": "Bearer t0ken"},
        )
    assert answer.status_code == 202, answer.text
    assert "warning" not in answer.json()
    ids.append(answer.json()["id"])
    done = queue_dirs(spool_root, "mail").done
    wait_until(lambda: len(names(done)) == 4, timeout=30)
    assert sorted(names(done)) == sorted(f"{i}.json" for i in ids)


def test_an_explicit_queue_wins_over_the_declared_one(spool_root: Path, mail_worker: Any) -> None:
    app = Spool(root=spool_root)
    task_id = app.enqueue("send_mail", ["a@b.c"], queue="other")
    assert app.state_of(task_id) == "incoming"
    assert names(queue_dirs(spool_root, "other").incoming)


def test_a_misspelt_name_is_refused_with_a_suggestion_and_nothing_is_written(
    spool_root: Path, mail_worker: Any
) -> None:
    result = cli(spool_root, "enqueue", "send_mial", "a@b.c")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: unknown task 'send_mial': no worker serves it (did you mean send_mail?)"
    ]
    assert incoming_files(spool_root) == []
    with pytest.raises(UnknownTaskName):
        Spool(root=spool_root).enqueue("send_mial", ["a@b.c"])


def test_no_check_enqueues_a_name_not_deployed_yet(spool_root: Path, mail_worker: Any) -> None:
    result = cli(spool_root, "enqueue", "--no-check", "brand_new", "-q", "later")
    assert result.returncode == 0, result.stderr
    assert len(names(queue_dirs(spool_root, "later").incoming)) == 1


def test_without_a_manifest_a_task_is_accepted_with_one_warning(spool_root: Path) -> None:
    result = cli(spool_root, "enqueue", "whatever", "1")
    assert result.returncode == 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no worker has published its tasks" in result.stderr
    assert names(queue_dirs(spool_root, "default").incoming)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([], "missing a required argument: 'to'"),
        (["a@b.c", "--kwargs", '{"bcc": "x"}'], "got an unexpected keyword argument 'bcc'"),
        (["a@b.c", "s", "third"], "too many positional arguments"),
    ],
)
def test_arguments_that_do_not_fit_are_refused_at_the_cli(
    spool_root: Path, mail_worker: Any, args: list[str], named: str
) -> None:
    result = cli(spool_root, "enqueue", "send_mail", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: send_mail(to, subject=..., *, cc=...): {named}"
    ]
    assert incoming_files(spool_root) == []
    with pytest.raises(BadArguments):
        Spool(root=spool_root).enqueue("send_mail", kwargs={"bcc": "x"})


def test_http_refuses_unknown_names_and_bad_arguments_with_422(
    spool_root: Path, tmp_path: Path, mail_worker: Any
) -> None:
    auth = {"Authorization": "Bearer t0ken"}
    with WebServer(spool_root, "t0ken", tmp_path / "web.log") as web:
        unknown = httpx.post(f"{web.url}/api/tasks", json={"task": "send_mial"}, headers=auth)
        unbound = httpx.post(f"{web.url}/api/tasks", json={"task": "send_mail"}, headers=auth)
        many = httpx.post(
            f"{web.url}/api/tasks", json=[{"task": "echo"}, {"task": "nope"}], headers=auth
        )
    assert unknown.status_code == 422 and "did you mean send_mail" in unknown.text
    assert unbound.status_code == 422 and "'to'" in unbound.text
    assert many.status_code == 422 and "task 2" in many.text
    assert incoming_files(spool_root) == []


def test_a_dropped_file_whose_arguments_do_not_bind_fails_at_once_without_retries(
    spool_root: Path, mail_worker: Any
) -> None:
    dirs = queue_dirs(spool_root, "mail").create()
    drop_into(dirs.incoming, "bad.json", json.dumps({"task": "send_mail"}).encode())
    wait_until(lambda: (dirs.failed / "bad.error.json").exists(), timeout=20)
    note = json.loads((dirs.failed / "bad.error.json").read_bytes())
    assert note["reason"].startswith("BadArguments: send_mail(")
    assert "'to'" in note["reason"]
    assert names(dirs.delayed) == []
    assert json.loads((dirs.failed / "bad.json").read_bytes()) == {"task": "send_mail"}


def test_spool_tasks_lists_the_published_tasks_and_who_knows_them(
    spool_root: Path, mail_worker: Any
) -> None:
    result = cli(spool_root, "--config", str(TEST_CONFIG), "tasks", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    mail = rows["send_mail"]
    assert mail["queue"] == "mail"
    assert mail["doc"] == "Pretend to send a mail: a task that declares its queue."
    assert [p["name"] for p in mail["params"]] == ["to", "subject", "cc"]
    assert len(mail["workers"]) == 1 and mail["version"]
    text = cli(spool_root, "tasks").stdout
    assert "send_mail" in text and "(to, subject=..., *, cc=...)" in text


# ---- a rolling deploy ----------------------------------------------------------------------

V1 = """
from spool import Spool
app = Spool(root="unused")

@app.task()
def a():
    return "v1"
"""

V2 = (
    V1.replace('"v1"', '"v2"')
    + """
@app.task()
def b(i):
    import time
    time.sleep(0.05)
    return i
"""
)


def version_dir(tmp_path: Path, name: str, code: str) -> Path:
    project = tmp_path / name
    project.mkdir()
    (project / "deploytasks.py").write_text(code)
    (project / "spool.toml").write_text(
        'tasks = ["deploytasks"]\n[workers]\nrescan_seconds = 1.0\nrecover_seconds = 0.5\n'
    )
    return project


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_during_a_rolling_deploy_tasks_wait_for_the_new_worker_and_none_fail(
    spool_root: Path, tmp_path: Path
) -> None:
    procs = []
    try:
        for name, code in (("old", V1), ("new", V2)):
            project = version_dir(tmp_path, name, code)
            command = spool_command(spool_root, "worker", config=project / "spool.toml")
            procs.append(subprocess.Popen(command, cwd=project, stderr=subprocess.DEVNULL))
            count = len(procs)
            wait_until(lambda: len(read_all(spool_root)) == count, timeout=30)  # noqa: B023
        old = procs[0]
        app = Spool(root=spool_root)
        before = cpu_seconds(old.pid)
        ids = [app.enqueue("b", [i]) for i in range(60)]
        done = queue_dirs(spool_root, "default").done
        wait_until(lambda: len(names(done)) == 60, timeout=60)
        spent = cpu_seconds(old.pid) - before
        assert names(queue_dirs(spool_root, "default").failed) == []
        workers = {json.loads((done / f"{i}.json").read_bytes())["worker"] for i in ids}
        assert len(workers) == 1 and str(old.pid) not in next(iter(workers)).split("-")
        assert spent < 1.0, f"the old worker spent {spent:.2f} s of CPU on tasks it cannot run"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)


def test_a_task_that_no_worker_knows_is_still_rejected_as_unknown(
    spool_root: Path, mail_worker: Any
) -> None:
    dirs = queue_dirs(spool_root, "mail").create()
    drop_into(dirs.incoming, "x.json", json.dumps({"task": "nobody_knows"}).encode())
    wait_until(lambda: (dirs.failed / "x.error.json").exists(), timeout=20)
    assert "unknown task 'nobody_knows'" in (dirs.failed / "x.error.json").read_text()


def test_the_python_api_checks_against_tasks_registered_in_the_process(
    spool_root: Path,
) -> None:
    app = Spool(root=spool_root)

    @app.task(queue="local")
    def here(x: int) -> int:
        return x

    with pytest.raises(BadArguments):
        here.delay()
    task_id = app.enqueue("here", [1])
    assert names(queue_dirs(spool_root, "local").incoming)[0].endswith(f"{task_id}.json")
    assert sys.modules[__name__]  # (a registered task needs no manifest on disk)


def test_without_a_manifest_the_http_answer_says_the_task_was_not_checked(
    spool_root: Path, tmp_path: Path
) -> None:
    with WebServer(spool_root, "t0ken", tmp_path / "web.log") as web:
        answer = httpx.post(
            f"{web.url}/api/tasks",
            json={"task": "anything"},
            headers={"Authorization": "Bearer t0ken"},
        )
    assert answer.status_code == 202
    assert "no worker has published its tasks" in answer.json()["warning"]
