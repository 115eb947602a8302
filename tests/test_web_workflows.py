"""Workflows over HTTP and on the dashboard: POST/GET /api/batches, the batch page, and the
links between a task, its parent, its follow-ups and its batch (also in `spool show`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spool import Spool
from tests.conftest import run_burst
from tests.test_web import AUTH, TestClient, client_for, settings_for


@pytest.fixture
def web(spool_root: Path) -> Iterator[TestClient]:
    with client_for(settings_for(spool_root)) as test_client:
        yield test_client


def test_a_batch_posted_over_http_calls_back_and_shows_its_progress(
    web: TestClient, spool_root: Path
) -> None:
    body = {"tasks": [{"task": "echo", "args": [i]} for i in range(3)], "id": "web-batch"}
    body["then"] = {"task": "echo", "args": ["all done"]}
    answer = web.post("/api/batches", json=body, headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert answer.json()["id"] == "web-batch" and len(answer.json()["ids"]) == 3
    assert web.get("/api/batches/web-batch").json()["pending"] == 3
    run_burst(spool_root)
    run_burst(spool_root)
    progress = web.get("/api/batches/web-batch").json()
    assert (progress["done"], progress["complete"]) == (3, True)
    assert web.get("/api/tasks/web-batch.then1").json()["result"] == "all done"
    assert web.post("/api/batches", json=body, headers=AUTH).status_code == 409


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ([{"task": "echo"}], 400),
        ({"tasks": [3]}, 400),
        ({"tasks": [], "when": 1}, 400),
        ({"tasks": [{"task": "echo"}], "then": [{"task": "echo", "id": "x"}]}, 400),
    ],
)
def test_bad_batch_bodies_are_400_with_the_reason(
    web: TestClient, body: object, status: int
) -> None:
    answer = web.post("/api/batches", json=body, headers=AUTH)
    assert answer.status_code == status and answer.json()["error"]


def test_an_unknown_batch_is_404_in_the_api_and_on_the_dashboard(web: TestClient) -> None:
    assert web.get("/api/batches/nope").status_code == 404
    assert web.get("/batches/nope").status_code == 404


def test_the_dashboard_links_a_task_to_its_batch_and_its_follow_ups(
    web: TestClient, app: Spool, spool_root: Path
) -> None:
    from tests.tasks import echo

    batch = app.batch([echo.s(1), echo.s(2)], then=echo.s("cb"))
    ids = app.chain(echo.s("a"), echo.s("b"))
    run_burst(spool_root)
    run_burst(spool_root)
    page = web.get(f"/batches/{batch.id}").text
    assert "2 of 2 ended" in page and f"/tasks/{batch.id}.then1" in page
    member = web.get(f"/tasks/{batch.task_ids[0]}").text
    assert f'href="/batches/{batch.id}"' in member
    parent = web.get(f"/tasks/{ids[0]}").text
    assert f'href="/tasks/{ids[1]}"' in parent
    assert f'href="/tasks/{ids[0]}"' in web.get(f"/tasks/{ids[1]}").text
    shown = app.show(ids[0])["workflow"]
    assert shown["then"] == [{"id": ids[1], "state": "done"}]
