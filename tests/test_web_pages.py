"""The dashboard's pages as an operator reads them (issue 21): the chart's axes and its one
scale, times with their zone, finished tasks by finish time, a task's arguments, duration and
attempts, a rejected file's bytes, running claims, search, the API page. In-process with
Starlette's TestClient on a real root; test_web_browser.py looks at them in Chromium."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from spool import Spool
from spool.inspect.paging import Lister, PageQuery, task_page
from spool.layout import QueueDirs
from spool.web import views
from spool.web.openapi import document
from tests.conftest import run_burst
from tests.test_web import AUTH, client_for, settings_for


@pytest.fixture
def client(spool_root: Path):  # type: ignore[no-untyped-def]
    with client_for(settings_for(spool_root)) as test_client:
        yield test_client


def done_file(dirs: QueueDirs, task_id: str, finished_at: float, **fields: object) -> None:
    task = {"id": task_id, "task": "echo", "attempts": 1, "finished_at": finished_at, **fields}
    path = dirs.done / f"{task_id}.json"
    path.write_text(json.dumps(task))
    os.utime(path, (finished_at, finished_at))


# ---- the chart ------------------------------------------------------------------------------


def test_the_chart_scale_is_a_round_number_at_or_above_the_peak() -> None:
    assert [views.nice_top(n) for n in (0, 1, 2, 3, 7, 10, 11, 58_207)] == [
        1, 1, 2, 5, 10, 10, 20, 100_000,
    ]  # fmt: skip


def test_every_queue_is_charted_on_one_scale_with_numbers_on_its_axes(
    client,
    spool_root: Path,  # type: ignore[no-untyped-def]
) -> None:
    # Broke once: each row was scaled on its own, so 2/min drew as tall as 3,100/min, and no
    # axis said how many.
    now = time.time()
    busy, quiet = QueueDirs(spool_root, "busy").create(), QueueDirs(spool_root, "quiet").create()
    for n in range(30):
        done_file(busy, f"b{n}", now - 5)
    done_file(quiet, "q0", now - 5)
    page = client.get("/").text
    assert page.count("data-top>50/min</text>") == 2  # the same top for both queues
    assert page.count(">now</text>") == 4 and page.count(">\u221260 min</text>") == 4
    heights = {
        queue: float(
            re.search(rf'data-queue="{queue}".*?<rect [^>]*height="([\d.]+)"', page, re.S)[1]
        )
        for queue in ("busy", "quiet")
    }
    assert heights["busy"] == pytest.approx(30 * heights["quiet"], rel=0.05)


# ---- times ----------------------------------------------------------------------------------


def test_times_are_24_hour_with_their_zone_and_carry_the_instant_for_the_browser(
    client,
    app: Spool,  # type: ignore[no-untyped-def]
) -> None:
    task_id = app.enqueue("echo")
    enqueued = app.show(task_id)["enqueued_at"]
    page = client.get(f"/tasks/{task_id}").text
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(enqueued))
    assert f'data-at="{enqueued:.3f}">{shown}</time>' in page
    assert 'id="zone"' in page  # the switch to the browser's zone


# ---- finished tasks by finish time ------------------------------------------------------------


def test_done_tasks_are_listed_by_finish_time_whatever_their_ids(
    client,
    spool_root: Path,  # type: ignore[no-untyped-def]
) -> None:
    # Broke once: done sorted by id, so custom ids ("zzz-old") hid the newer tasks.
    dirs = QueueDirs(spool_root, "default").create()
    now = time.time()
    order = ["aaa-newest", "zzz-old", "20261202T000000000000-abcdef01", "mmm-oldest"]
    for age, task_id in enumerate(order):
        done_file(dirs, task_id, now - 60 * (age + 1))
    page = client.get("/queues/default", params={"state": "done"}).text
    assert re.findall(r'<tr data-id="([^"]+)"', page) == order
    assert "by finish time, newest first" in page
    seen, after = [], None
    for _ in range(5):  # the API pages the same order with its cursor
        query = PageQuery("done", after=after, size=3)
        result = task_page(Lister(), dirs, query)
        seen += [row["id"] for row in result.rows]
        after = result.next_after
        if after is None:
            break
    assert seen == order


# ---- a task -----------------------------------------------------------------------------------


def history_entry(attempt: int, at: float, message: str) -> dict[str, object]:
    trace = f"Traceback (most recent call last):\n  ...\nRuntimeError: {message}\n"
    error = {"type": "RuntimeError", "message": message, "traceback": trace}
    return {"attempt": attempt, "worker": "w1", "started_at": at - 2, "finished_at": at,
            "error": error}  # fmt: skip


def test_a_task_page_shows_arguments_duration_and_each_attempt_readably(
    client,
    spool_root: Path,  # type: ignore[no-untyped-def]
) -> None:
    # Broke once: args hid in a raw JSON box with \u0027 escapes, a retried task's history read
    # "3. attempt 1", and the error block repeated the last history entry.
    dirs = QueueDirs(spool_root, "default").create()
    now = time.time()
    history = [history_entry(1, now - 300, "first"), history_entry(2, now - 200, "second")]
    history.append(history_entry(1, now - 10, "after the retry"))
    task = {
        "id": "t-1", "task": "send_email", "args": ["it's me", 3], "kwargs": {"subject": "d'oh"},
        "attempts": 1, "started_at": now - 12.5, "finished_at": now - 10, "history": history,
        "error": history[-1]["error"], "retried_at": now - 100,
    }  # fmt: skip
    (dirs.failed / "t-1.json").write_text(json.dumps(task))
    page = client.get("/tasks/t-1").text
    assert "\\u0027" not in page
    assert re.search(r"data-args>\[\s*&#34;it&#39;s me&#34;,\s*3\s*\]</pre>", page)
    assert "&#34;subject&#34;: &#34;d&#39;oh&#34;" in page
    assert "data-duration>2.50 s<" in page
    runs = re.findall(r'<tr data-run="(\d)">\s*<td [^>]*>\d</td><td [^>]*>(\d)</td>', page)
    assert runs == [("1", "1"), ("2", "2"), ("3", "1")]
    assert page.count("retried by an operator: attempts counted again from 1") == 1
    assert page.count("  ...\nRuntimeError: after the retry") == 1  # its traceback, shown once
    assert "the traceback is the last attempt's, below" in page


def test_a_rejected_file_shows_its_bytes_and_reason_and_offers_no_retry(
    client,
    app: Spool,
    spool_root: Path,  # type: ignore[no-untyped-def]
) -> None:
    incoming = QueueDirs(spool_root, "default").create().incoming
    (incoming / "upload-7.json").write_bytes(b'{"task": "echo", "args": [1,\xff')
    assert run_burst(spool_root).returncode == 0
    page = client.get("/tasks/upload-7").text
    assert "data-reason>not UTF-8 (byte 28)</p>" in page
    assert "{&#34;task&#34;: &#34;echo&#34;, &#34;args&#34;: [1,\\xff</pre>" in page
    assert "(29 bytes, not UTF-8" in page
    assert 'data-url="/api/tasks/upload-7/retry"' not in page
    assert "spool retry upload-7" in page
    listing = client.get("/queues/default", params={"state": "failed"}).text
    assert 'data-url="/api/tasks/upload-7/retry"' not in listing


def test_a_running_claim_shows_its_attempt_and_how_long_it_runs(
    client,
    app: Spool,
    spool_root: Path,  # type: ignore[no-untyped-def]
) -> None:
    # Broke once: processing rows said attempts 0 and nothing of the running time.
    task_id = app.enqueue("echo")
    dirs = QueueDirs(spool_root, "default")
    [name] = os.listdir(dirs.incoming)
    os.rename(dirs.incoming / name, dirs.processing / f"{name}@w1")  # a claim, as a worker makes
    page = client.get("/queues/default", params={"state": "processing"}).text
    row = rf'data-id="{task_id}".*?data-attempt [^>]*>1<.*?data-running [^>]*>\d+ ms<'
    assert re.search(row, page, re.S)
    assert "data-running>attempt 1, for " in client.get(f"/tasks/{task_id}").text


# ---- search and the API page ----------------------------------------------------------------


def test_search_finds_tasks_by_id_task_name_and_text(
    client,
    app: Spool,
    spool_root: Path,  # type: ignore[no-untyped-def]
) -> None:
    wanted = app.enqueue("send_email", args=["ada@example.org"], queue="mail", check=False)
    other = app.enqueue("echo", args=["nothing here"], check=False)
    exact = client.get("/search", params={"q": wanted}, follow_redirects=False)
    assert exact.status_code == 303 and exact.headers["location"] == f"/tasks/{wanted}"
    by_name = client.get("/search", params={"q": "SEND_email"}).text
    by_text = client.get("/search", params={"q": "ada@example"}).text
    for page in (by_name, by_text):
        assert f'data-id="{wanted}"' in page and f'data-id="{other}"' not in page
    assert "nothing matches" in client.get("/search", params={"q": "zebra"}).text


def test_the_api_page_renders_every_operation_of_the_openapi_document(client) -> None:  # type: ignore[no-untyped-def]
    # Broke once: "API" opened the raw JSON.
    page = client.get("/docs/api")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for path, methods in document()["paths"].items():
        for method in methods:
            assert f'data-endpoint="{method.upper()} {path}"' in page.text
    assert 'href="/docs/api"' in client.get("/").text


def test_failed_tasks_are_grouped_by_task_and_error_and_a_group_is_retried_at_once(
    client,
    app: Spool,
    spool_root: Path,  # type: ignore[no-untyped-def]
) -> None:
    smtp = [app.enqueue("fail", args=["SMTP said 554"], max_retries=0) for _ in range(3)]
    other = app.enqueue("fail", args=["disk"], max_retries=0, queue="default")
    cancelled = app.enqueue("echo", delay=600)
    assert client.delete(f"/api/tasks/{cancelled}", headers=AUTH).status_code == 200
    (QueueDirs(spool_root, "default").incoming / "junk.json").write_text("not json")
    assert run_burst(spool_root).returncode == 0
    groups = client.get("/api/queues/default/failures").json()["groups"]
    assert [(g["task"], g["error_type"], g["count"]) for g in groups] == [
        ("fail", "RuntimeError", 4),
        ("?", "Rejected", 1),
    ]  # (the cancelled task is no failure)
    page = client.get("/queues/default", params={"state": "failed"}).text
    assert "retry all 4" in page and "fix the files first" in page
    answer = client.post(
        "/api/queues/default/retry", json={"task": "fail", "error_type": "RuntimeError"}
    )
    assert answer.status_code == 401  # a change: the token is needed
    answer = client.post(
        "/api/queues/default/retry",
        json={"task": "fail", "error_type": "RuntimeError"},
        headers=AUTH,
    )
    assert answer.status_code == 200 and answer.json()["retried"] == 4
    assert {app.state_of(task_id) for task_id in [*smtp, other]} == {"incoming"}
    assert app.state_of(cancelled) == "failed"
    refused = client.post(
        "/api/queues/default/retry", json={"task": "?", "error_type": "Rejected"}, headers=AUTH
    )
    assert refused.status_code == 409


def test_runtime_p50_and_p95_per_minute_come_from_what_the_histogram_grew_by(
    app: Spool, spool_root: Path
) -> None:
    from spool.inspect.throughput import Throughput

    rates = Throughput(spool_root)
    app.enqueue("echo")
    assert run_burst(spool_root).returncode == 0
    rates.sample()  # (what ran before the dashboard is not charted)
    assert rates.runtimes("default")[-1] is None
    for n in range(18):
        app.enqueue("add", args=[n, n])
    for _ in range(2):
        app.enqueue("sleep_then_return", args=[0.15, "slow"])
    assert run_burst(spool_root).returncode == 0
    rates.sampled_at = float("-inf")  # (samples are at most every 2 s)
    rates.sample()
    point = rates.runtimes("default")[-1] or rates.runtimes("default", time.time() - 60)[-1]
    assert point is not None
    p50, p95 = point
    assert p50 <= 0.05 and 0.1 <= p95 <= 0.25
    chart = views.runtime_chart(rates.runtimes("default"), views.runtime_top([[point]]))
    assert chart.top_label == "250 ms" and {bar.kind for bar in chart.bars} == {"p50", "p95"}


def test_a_quantile_is_interpolated_inside_its_bucket() -> None:
    from spool.stats import DURATION_BUCKETS, quantile

    counts = [0] * (len(DURATION_BUCKETS) + 1)
    assert quantile(counts, 0.5) is None
    counts[DURATION_BUCKETS.index(1)] = 10  # ten attempts of 0.5 s to 1 s
    assert quantile(counts, 0.5) == pytest.approx(0.75)
    counts[-1] = 90  # and ninety over 300 s
    assert quantile(counts, 0.95) == 300.0
