"""spool web: the JSON API, the pages and the rules they keep (token, limits, ids, errors).

Most tests drive the app in-process through Starlette's TestClient on a real spool root; the
intake tests run a real `spool web` server and real workers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from spool import Spool
from spool.config import Settings, load_settings
from spool.inspect import paging
from spool.inspect.paging import Lister, PageQuery, task_page
from spool.layout import QueueDirs
from spool.manage import cancel
from spool.web.server import create_app, is_loopback, loopback_hosts
from tests.conftest import PROJECT_DIR, TEST_CONFIG, names, run_burst, wait_until
from tests.webserver import WebServer

with warnings.catch_warnings():  # (it asks for httpx2; httpx is what the project installs)
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = PROJECT_DIR / "examples" / "producers"


def settings_for(root: Path, token: str | None = TOKEN, **extra: str) -> Settings:
    env = {"SPOOL_WEB_TOKEN": token} if token else {}
    return load_settings(str(root), str(TEST_CONFIG), env=env | extra)


def client_for(settings: Settings) -> TestClient:
    app = create_app(settings, loopback_hosts("127.0.0.1"))
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


@pytest.fixture
def client(spool_root: Path) -> Iterator[TestClient]:
    with client_for(settings_for(spool_root)) as test_client:
        yield test_client


@pytest.fixture
def server(spool_root: Path, tmp_path: Path) -> Iterator[WebServer]:
    with WebServer(spool_root, TOKEN, tmp_path / "web.log") as web:
        yield web


def enqueue(client: TestClient, body: object, **params: str) -> httpx.Response:
    return client.post("/api/tasks", json=body, headers=AUTH, params=params)


def failed_task(app: Spool) -> str:
    """A task in failed/: a cancelled one (it rests there, counted as cancelled, not failed)."""
    task_id = app.enqueue("echo", args=["x"])
    cancel(app.root, task_id)
    return task_id


# ---- POST /api/tasks -------------------------------------------------------------------


def test_post_one_task_answers_202_with_its_id_once_the_file_is_in_incoming(
    client: TestClient, spool_root: Path
) -> None:
    response = enqueue(client, {"task": "add", "args": [1, 2], "priority": 5})
    assert response.status_code == 202
    task_id = response.json()["id"]
    assert response.json()["ids"] == [task_id]
    [name] = names(spool_root / "default" / "incoming")
    assert name.endswith(f"_{task_id}.json") and name.startswith("4_")
    task = json.loads((spool_root / "default" / "incoming" / name).read_text())
    assert task["task"] == "add" and task["args"] == [1, 2] and task["attempts"] == 0


def test_post_a_list_enqueues_every_task_in_order_into_its_queue(
    client: TestClient, spool_root: Path
) -> None:
    tasks = [{"task": "echo", "args": [n]} for n in range(5)] + [{"task": "noop", "queue": "mail"}]
    response = enqueue(client, tasks)
    assert response.status_code == 202
    ids = response.json()["ids"]
    assert len(ids) == 6 and len(set(ids)) == 6
    incoming = names(spool_root / "default" / "incoming")
    assert [n.split("_", 2)[2].removesuffix(".json") for n in incoming] == ids[:5]
    assert names(spool_root / "mail" / "incoming")[0].endswith(f"_{ids[5]}.json")


def test_post_queue_parameter_and_delay_and_given_id(client: TestClient, spool_root: Path) -> None:
    response = enqueue(client, {"task": "echo", "id": "order-17", "delay": 3600}, queue="slow")
    assert response.status_code == 202 and response.json()["id"] == "order-17"
    [entry] = names(spool_root / "slow" / "delayed")
    assert entry.endswith("_order-17.json")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"task": "echo", "args": [NaN]}', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"", "not valid JSON"),
        (b"42", "task object or a non-empty list"),
        (b"[]", "task object or a non-empty list"),
        (b'[{"task": "echo"}, 3]', "task 2: must be a JSON object"),
        (b'{"args": []}', "field 'task' is required"),
        (b'{"task": "echo", "priority": 12}', "priority"),
        (b'{"task": "echo", "args": {}}', "field 'args' must be an array"),
        (b'{"task": "echo", "id": "../../etc/passwd"}', "field 'id'"),
        (b'{"task": "echo", "queue": "../x"}', "invalid queue name"),
        (b'[{"task": "echo"}, {"task": "echo", "timeout": -1}]', "task 2: field 'timeout'"),
    ],
)
def test_post_invalid_bodies_are_400_with_the_reason_and_write_nothing(
    client: TestClient, spool_root: Path, body: bytes, message: str
) -> None:
    response = client.post("/api/tasks", content=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert not any(names(spool_root / q / "incoming") for q in os.listdir(spool_root))


def test_post_bad_queue_parameter_is_400(client: TestClient) -> None:
    response = enqueue(client, {"task": "echo"}, queue="no/slash")
    assert response.status_code == 400 and "invalid queue name" in response.json()["error"]


def test_oversized_body_is_413_with_or_without_content_length(spool_root: Path) -> None:
    settings = load_settings(str(spool_root), str(TEST_CONFIG), env={"SPOOL_WEB_TOKEN": TOKEN})
    small = Settings(**{**settings.__dict__, "web_max_body": 1000})
    big = json.dumps({"task": "echo", "args": ["x" * 2000]}).encode()
    with client_for(small) as client:
        declared = client.post("/api/tasks", content=big, headers=AUTH)
        assert declared.status_code == 413 and "max_body" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to trust
            for _ in range(4):
                yield big[:600]

        streamed = client.post("/api/tasks", content=chunks(), headers=AUTH)
        assert streamed.status_code == 413
        fits = client.post("/api/tasks", json={"task": "echo"}, headers=AUTH)
        assert fits.status_code == 202
    assert len(names(spool_root / "default" / "incoming")) == 1


def test_max_body_comes_from_the_config(tmp_path: Path, spool_root: Path) -> None:
    config = tmp_path / "spool.toml"
    config.write_text('tasks = ["tests.tasks"]\n[web]\nmax_body = 100\nport = 9001\n')
    settings = load_settings(str(spool_root), str(config), env={"SPOOL_WEB_TOKEN": TOKEN})
    assert (settings.web_max_body, settings.web_port, settings.web_token) == (100, 9001, TOKEN)
    with client_for(settings) as client:
        response = enqueue(client, {"task": "echo", "args": ["y" * 200]})
        assert response.status_code == 413


# ---- the token -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing token"),
        ({"Authorization": "Bearer wrong"}, "wrong token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "wrong token"),
        ({"Authorization": f"Basic {TOKEN}"}, "missing token"),
        ({"Authorization": "Bearer "}, "missing token"),
    ],
)
def test_changes_without_the_right_token_are_401(
    client: TestClient, app: Spool, spool_root: Path, headers: dict[str, str], message: str
) -> None:
    task_id = app.enqueue("echo")
    failed_id = failed_task(app)
    attempts = [
        client.post("/api/tasks", json={"task": "echo"}, headers=headers),
        client.delete(f"/api/tasks/{task_id}", headers=headers),
        client.post(f"/api/tasks/{failed_id}/retry", headers=headers),
        client.post("/api/queues/default/pause", headers=headers),
        client.post("/api/queues/default/resume", headers=headers),
        client.post("/api/queues/default/purge", json={"state": "failed"}, headers=headers),
    ]
    for response in attempts:
        assert response.status_code == 401, response.text
        assert message in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert len(names(spool_root / "default" / "incoming")) == 1
    assert names(spool_root / "default" / "failed") == [f"{failed_id}.json"]
    assert not (spool_root / "default" / ".paused").exists()


def test_without_a_configured_token_changes_are_403_and_reading_works(
    spool_root: Path, app: Spool
) -> None:
    task_id = app.enqueue("echo")
    with client_for(settings_for(spool_root, token=None)) as client:
        refused = client.post("/api/tasks", json={"task": "echo"}, headers=AUTH)
        assert refused.status_code == 403
        assert "SPOOL_WEB_TOKEN" in refused.json()["error"]
        assert client.delete(f"/api/tasks/{task_id}", headers=AUTH).status_code == 403
        assert client.get(f"/api/tasks/{task_id}").status_code == 200
        assert client.get("/api/queues").status_code == 200
        assert "no token configured" in client.get("/").text


def test_token_from_the_config_file_and_env_wins(tmp_path: Path, spool_root: Path) -> None:
    config = tmp_path / "spool.toml"
    config.write_text('tasks = ["tests.tasks"]\n[web]\ntoken = "from-file"\n')
    from_file = load_settings(str(spool_root), str(config), env={})
    assert from_file.web_token == "from-file" and "from-file" not in repr(from_file)
    from_env = load_settings(str(spool_root), str(config), env={"SPOOL_WEB_TOKEN": "env"})
    assert from_env.web_token == "env"
    with client_for(from_file) as client:
        ok = client.post(
            "/api/tasks", json={"task": "echo"}, headers={"Authorization": "Bearer from-file"}
        )
        assert ok.status_code == 202


def test_no_cookies_and_safety_headers(client: TestClient) -> None:
    for response in (client.get("/"), client.get("/api/queues"), enqueue(client, {"task": "x"})):
        assert "set-cookie" not in response.headers
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_a_foreign_host_name_is_refused_on_loopback(client: TestClient) -> None:
    response = client.get("/api/queues", headers={"Host": "evil.example:8750"})
    assert response.status_code == 400 and response.json() == {"error": "unexpected Host header"}
    assert client.get("/api/queues", headers={"Host": "localhost:8750"}).status_code == 200


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


# ---- reading tasks and queues -----------------------------------------------------------


def test_get_task_shows_the_file_with_queue_and_state(client: TestClient, app: Spool) -> None:
    task_id = app.enqueue("add", args=[1, 2], queue="math")
    response = client.get(f"/api/tasks/{task_id}")
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["queue"], body["state"], body["args"]) == (
        task_id,
        "math",
        "incoming",
        [1, 2],
    )


@pytest.mark.parametrize(
    "path",
    [
        "/api/tasks/..%2F..%2Fetc%2Fpasswd",
        "/api/tasks/%2e%2e",
        "/api/tasks/..",
        "/api/tasks/a%00b",
        "/api/tasks/x.error",
        "/api/tasks/" + "a" * 129,
        "/api/tasks/nope",
        "/tasks/..%2F..%2Fetc%2Fpasswd",
        "/queues/..%2Fetc",
        "/api/queues/..%2F..%2Ftmp/tasks",
        "/static/..%2F..%2Fweb.py",
    ],
)
def test_unknown_and_traversing_ids_are_404_json(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, (path, response.text)
    if not path.startswith("/tasks/"):  # the task page renders its own 404 page
        assert "error" in response.json()
    assert "passwd" not in response.text or path.startswith("/tasks/")
    assert "root:" not in response.text


def test_unknown_paths_and_methods_are_json_errors(client: TestClient) -> None:
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong = client.put("/api/tasks", json={})
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"}


def test_get_queues_has_depths_throughput_and_running_workers(
    client: TestClient, app: Spool, spool_root: Path
) -> None:
    app.enqueue("echo")
    app.enqueue("echo", queue="mail")
    # a claim by a worker as a worker names it: <incoming name>@<worker id>
    name = names(spool_root / "mail" / "incoming")[0]
    os.rename(
        spool_root / "mail" / "incoming" / name, spool_root / "mail" / "processing" / f"{name}@w1"
    )
    data = client.get("/api/queues").json()
    assert data["queues"]["default"]["incoming"] == 1
    assert data["queues"]["mail"]["processing"] == 1
    assert len(data["queues"]["mail"]["finished_per_minute"]) == 60
    assert data["queues"]["default"]["paused"] is False
    assert data["workers"] == []  # w1 holds no lock: it is not alive


def test_queue_tasks_pages_with_a_cursor(client: TestClient, app: Spool) -> None:
    ids = app.enqueue_many([{"task": "echo", "args": [n]} for n in range(23)])
    seen: list[str] = []
    after = ""
    for _ in range(10):
        page = client.get("/api/queues/default/tasks", params={"limit": 10, "after": after}).json()
        seen += [row["id"] for row in page["tasks"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == ids  # run order, each once
    bad = client.get("/api/queues/default/tasks", params={"state": "sideways"})
    assert bad.status_code == 400
    assert client.get("/api/queues/default/tasks", params={"limit": 0}).status_code == 400
    assert client.get("/api/queues/default/tasks", params={"since": "soon"}).status_code == 400
    assert client.get("/api/queues/nope/tasks").status_code == 404


def test_paging_through_windows_of_a_big_directory(
    spool_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paging, "WINDOW", 7)
    monkeypatch.setattr(paging, "BIG_LISTING", 5)
    dirs = QueueDirs(spool_root, "default").create()
    made = {
        f"20260101T0000{n:02d}000000-aa.json": "add" if n % 3 == 0 else "echo" for n in range(30)
    }
    for name, task in made.items():
        (dirs.done / name).write_text(json.dumps({"task": task}))
    lister = Lister()
    seen: list[str] = []
    after = None
    for _ in range(20):
        page = task_page(lister, dirs, PageQuery("done", after=after, size=4))
        seen += [row["file"] for row in page.rows]
        after = page.next_after
        if after is None:
            break
    assert seen == sorted(made, reverse=True)
    assert lister.windows[dirs.done]  # big: its windows are kept
    adds = task_page(lister, dirs, PageQuery("done", task="add", size=100))
    assert [row["file"] for row in adds.rows] == sorted(
        (name for name, task in made.items() if task == "add"), reverse=True
    )
    assert adds.next_after is None


# ---- actions --------------------------------------------------------------------------------


def test_retry_moves_a_failed_task_back_and_refuses_others(
    client: TestClient, app: Spool, spool_root: Path
) -> None:
    failed_id = failed_task(app)
    response = client.post(f"/api/tasks/{failed_id}/retry", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"id": failed_id, "queue": "default", "state": "incoming"}
    assert names(spool_root / "default" / "failed") == []
    again = client.post(f"/api/tasks/{failed_id}/retry", headers=AUTH)
    assert again.status_code == 409 and "not failed" in again.json()["error"]
    unknown = client.post("/api/tasks/nope/retry", headers=AUTH)
    assert unknown.status_code == 404 and "unknown task id" in unknown.json()["error"]


def test_cancel_records_a_pending_task_as_cancelled(
    client: TestClient, app: Spool, spool_root: Path
) -> None:
    task_id = app.enqueue("echo", delay=600)
    response = client.delete(f"/api/tasks/{task_id}", headers=AUTH)
    assert response.status_code == 200 and response.json()["cancelled"] is True
    task = json.loads((spool_root / "default" / "failed" / f"{task_id}.json").read_text())
    assert task["error"]["type"] == "Cancelled"
    again = client.delete(f"/api/tasks/{task_id}", headers=AUTH)
    assert again.status_code == 409 and "only pending or running tasks" in again.json()["error"]
    assert client.delete("/api/tasks/..", headers=AUTH).status_code == 404


def test_pause_resume_and_purge_a_queue(client: TestClient, app: Spool, spool_root: Path) -> None:
    failed_task(app)
    paused = client.post("/api/queues/default/pause", json={"reason": "deploy"}, headers=AUTH)
    assert paused.status_code == 200 and (spool_root / "default" / ".paused").exists()
    assert (
        client.get("/api/queues").json()["queues"]["default"]["paused_info"]["reason"] == "deploy"
    )
    no_body = client.post("/api/queues/default/pause", headers=AUTH)
    assert no_body.status_code == 200
    resumed = client.post("/api/queues/default/resume", headers=AUTH)
    assert resumed.json() == {"queue": "default", "paused": False, "was_paused": True}
    purged = client.post("/api/queues/default/purge", json={"state": "failed"}, headers=AUTH)
    assert purged.json()["deleted"] == 1 and names(spool_root / "default" / "failed") == []
    for body in ({"state": "incoming"}, {"state": "done", "older_than": "soon"}, [1]):
        bad = client.post("/api/queues/default/purge", json=body, headers=AUTH)
        assert bad.status_code == 400, body
    unknown = client.post("/api/queues/nope/pause", headers=AUTH)
    assert unknown.status_code == 404 and not (spool_root / "nope").exists()
    bad_reason = client.post("/api/queues/default/pause", json={"reason": 3}, headers=AUTH)
    assert bad_reason.status_code == 400


# ---- metrics, openapi, pages ----------------------------------------------------------------


def test_metrics_are_prometheus_text(client: TestClient, app: Spool) -> None:
    app.enqueue("echo")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert 'spool_tasks{queue="default",state="incoming"} 1.0' in response.text


def test_openapi_document_lists_every_api_route(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert set(paths["/api/tasks/{task_id}"]) == {"get", "delete"}
    for path in ("/api/tasks", "/api/queues", "/api/tasks/{task_id}/retry", "/metrics"):
        assert path in paths
    assert paths["/api/tasks"]["post"]["security"] == [{"bearer": []}]


def test_pages_show_queues_tasks_and_one_task(
    client: TestClient, app: Spool, spool_root: Path
) -> None:
    for n in range(3):
        app.enqueue("echo", args=[n], queue="mail")
    failed_id = failed_task(app)
    overview = client.get("/")
    assert overview.status_code == 200 and "text/html" in overview.headers["content-type"]
    assert 'href="/queues/mail"' in overview.text and "<svg" in overview.text
    assert "no live workers" in overview.text
    partial = client.get("/?partial=1")
    assert "<html" not in partial.text and 'data-queue="mail"' in partial.text
    listing = client.get("/queues/mail")
    assert listing.text.count('data-id="') == 3
    failed = client.get("/queues/default", params={"state": "failed"})
    assert failed_id in failed.text and "Cancelled" in failed.text and "retry" in failed.text
    detail = client.get(f"/tasks/{failed_id}")
    assert detail.status_code == 200 and "Cancelled" in detail.text and failed_id in detail.text
    assert client.get("/tasks/nope").status_code == 404
    assert client.get("/queues/nope").status_code == 404
    assert client.get("/queues/mail", params={"since": "soon"}).status_code == 400
    filtered = client.get("/queues/mail", params={"task": "other"})
    assert 'data-id="' not in filtered.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_page_escapes_what_task_files_hold(client: TestClient, app: Spool) -> None:
    task_id = app.enqueue("<script>alert(1)</script>", args=["<b>x</b>"])
    page = client.get(f"/tasks/{task_id}").text + client.get("/queues/default").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page


# ---- real servers, real workers, real programs ----------------------------------------------


def test_a_task_posted_over_http_is_run_by_a_worker(
    server: WebServer, spool_root: Path, start_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    start_worker()
    response = httpx.post(
        f"{server.url}/api/tasks", json={"task": "add", "args": [20, 22]}, headers=AUTH
    )
    assert response.status_code == 202
    task_id = response.json()["id"]

    def finished() -> bool:
        return httpx.get(f"{server.url}/api/tasks/{task_id}").json()["state"] == "done"

    wait_until(finished, timeout=20, interval=0.05)
    assert httpx.get(f"{server.url}/api/tasks/{task_id}").json()["result"] == 42
    workers = httpx.get(f"{server.url}/api/queues").json()["workers"]
    assert len(workers) == 1 and workers[0]["running"] == []


def test_a_failed_attempt_shows_its_traceback_on_the_task_page(
    client: TestClient, app: Spool, spool_root: Path
) -> None:
    task_id = app.enqueue("fail", args=["on purpose"], max_retries=0)
    run_burst(spool_root)
    page = client.get(f"/tasks/{task_id}").text
    assert "RuntimeError: on purpose" in page and "Traceback" in page


def test_spool_web_refuses_a_public_address_without_a_token(spool_root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPOOL_WEB_TOKEN"}
    command = [sys.executable, "-m", "spool", "--root", str(spool_root)]
    command += ["--config", str(TEST_CONFIG), "web", "--host", "0.0.0.0", "--port", "1"]
    result = subprocess.run(
        command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "without a token" in lines[0] and "SPOOL_WEB_TOKEN" in lines[0]
    assert "Traceback" not in result.stderr


def test_curl_example_enqueues(server: WebServer, spool_root: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(
        ["sh", str(EXAMPLES / "curl.sh"), server.url],
        env={**os.environ, "SPOOL_WEB_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    task_id = json.loads(result.stdout)["id"]
    [name] = names(spool_root / "default" / "incoming")
    assert name.endswith(f"_{task_id}.json")
    wrong = subprocess.run(
        ["sh", str(EXAMPLES / "curl.sh"), server.url],
        env={**os.environ, "SPOOL_WEB_TOKEN": "nope"},
        capture_output=True,
        timeout=30,
    )
    assert wrong.returncode != 0


def test_php_example_enqueues(server: WebServer, spool_root: Path) -> None:
    php = shutil.which("php")
    if php is None:
        pytest.skip("php is not installed")
    script = str(EXAMPLES / "enqueue.php")
    env = {**os.environ, "SPOOL_WEB_TOKEN": TOKEN}
    result = subprocess.run(
        [php, script, server.url], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr + result.stdout
    task_id = result.stdout.strip()
    task = json.loads(next((spool_root / "default" / "incoming").iterdir()).read_text())
    assert task["id"] == task_id and task["args"] == ["hello from PHP"] and task["kwargs"] == {}
    env["SPOOL_WEB_TOKEN"] = "nope"
    refused = subprocess.run(
        [php, script, server.url], env=env, capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 1 and "wrong token" in refused.stderr


def test_the_dashboard_shows_cancelled_tasks_apart_from_failed_ones(
    client: TestClient, app: Spool
) -> None:
    cancelled_id = failed_task(app)  # (a cancelled task)
    queues = client.get("/api/queues").json()["queues"]["default"]
    assert (queues["failed"], queues["cancelled"]) == (0, 1)
    assert "+ 1 cancelled" in client.get("/").text
    page = client.get("/queues/default", params={"state": "failed"}).text
    assert cancelled_id in page and '<span class="badge">cancelled</span>' in page
