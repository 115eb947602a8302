"""spool web in a real headless Chromium (Playwright) against a real `spool web` server.

Set SPOOL_SCREENSHOT_DIR to also save the pages' pictures at two widths there (docs/, which
docs/web.md shows).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spool import Spool
from tests.conftest import names, run_burst, wait_until
from tests.webserver import WebServer

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

TOKEN = "browser-token"
WAIT_MS = 15_000


@pytest.fixture
def server(spool_root: Path, tmp_path: Path) -> Iterator[WebServer]:
    with WebServer(spool_root, TOKEN, tmp_path / "web.log") as web:
        yield web


@pytest.fixture
def page(tmp_path: Path) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 760})
            context.set_default_timeout(WAIT_MS)
            yield context.new_page()
            context.close()
        finally:
            browser.close()


def seed(app: Spool, spool_root: Path) -> str:
    """2 done, 1 failed (a real failure) in default; 3 waiting there and 1 in mail."""
    app.enqueue("add", args=[1, 2])
    app.enqueue("echo", args=["hi"])
    failed_id = app.enqueue("fail", args=["on purpose"], max_retries=0)
    assert run_burst(spool_root).returncode == 0
    for n in range(3):
        app.enqueue("echo", args=[n])
    app.enqueue("echo", args=["mail"], queue="mail")
    return failed_id


def count_cell(page: sync_api.Page, queue: str, state: str) -> sync_api.Locator:
    return page.locator(f'tr[data-queue="{queue}"] a[data-count="{state}"]')


def enter_token(page: sync_api.Page) -> None:
    page.fill("#token", TOKEN)
    page.click("#token-save")
    sync_api.expect(page.locator("#token-state")).to_have_text("token set")


def test_overview_shows_the_counts_of_the_spool(
    app: Spool,
    spool_root: Path,
    server: WebServer,
    page: sync_api.Page,
    tmp_path: Path,
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    seed(app, spool_root)
    app.enqueue("sleep_then_return", args=[30, "slow"], queue="mail", priority=9)
    start_worker("--queue", "mail")
    wait_until(lambda: len(names(spool_root / "mail" / "processing")) == 1, timeout=20)
    page.goto(server.url + "/")
    expected = {"incoming": "3", "delayed": "0", "processing": "0", "done": "2", "failed": "1"}
    for state, count in expected.items():
        sync_api.expect(count_cell(page, "default", state)).to_have_text(count)
    sync_api.expect(count_cell(page, "mail", "processing")).to_have_text("1")
    sync_api.expect(page.locator("table.workers")).to_contain_text("sleep_then_return")
    # the finished tasks of this hour (sampled every 2 s: the live refresh brings them)
    sync_api.expect(page.locator('tr[data-queue="default"] svg.chart rect').first).to_be_attached()
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_retry_button_asks_then_moves_the_failed_task(
    app: Spool, spool_root: Path, server: WebServer, page: sync_api.Page
) -> None:
    failed_id = seed(app, spool_root)
    page.goto(f"{server.url}/queues/default?state=failed")
    row = page.locator(f'tr[data-id="{failed_id}"]')
    sync_api.expect(row).to_contain_text("RuntimeError")
    row.locator("button", has_text="retry").click()  # no token yet: refused in the page
    sync_api.expect(page.locator("#flash")).to_contain_text("enter the token")
    assert names(spool_root / "default" / "failed") == [f"{failed_id}.json"]
    enter_token(page)
    questions: list[str] = []

    def accept(dialog: sync_api.Dialog) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    row.locator("button", has_text="retry").click()
    sync_api.expect(page.locator("#flash")).to_contain_text("done")
    assert questions == [f"Retry task {failed_id}?"]
    wait_until(lambda: names(spool_root / "default" / "failed") == [], timeout=10)
    assert any(
        name.endswith(f"_{failed_id}.json") for name in names(spool_root / "default" / "incoming")
    )
    sync_api.expect(row).to_have_count(0)  # the list refreshed itself


def test_declining_the_confirmation_changes_nothing(
    app: Spool, spool_root: Path, server: WebServer, page: sync_api.Page
) -> None:
    task_id = app.enqueue("echo", args=["stay"])
    page.goto(f"{server.url}/tasks/{task_id}")
    enter_token(page)
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator("button", has_text="cancel").click()
    sync_api.expect(page.locator("[data-task-state]")).to_have_text("incoming")
    assert len(names(spool_root / "default" / "incoming")) == 1


def test_live_view_updates_when_a_task_finishes(
    app: Spool, spool_root: Path, server: WebServer, page: sync_api.Page
) -> None:
    task_id = app.enqueue("add", args=[40, 2])
    page.goto(f"{server.url}/tasks/{task_id}")
    sync_api.expect(page.locator("[data-task-state]")).to_have_text("incoming")
    overview = page.context.new_page()
    overview.goto(server.url + "/")
    sync_api.expect(count_cell(overview, "default", "done")).to_have_text("0")
    page.evaluate("window.notReloaded = true")
    overview.evaluate("window.notReloaded = true")
    assert run_burst(spool_root).returncode == 0
    sync_api.expect(page.locator("[data-task-state]")).to_have_text("done")
    sync_api.expect(page.locator("pre[data-result]")).to_have_text("42")
    sync_api.expect(count_cell(overview, "default", "done")).to_have_text("1")
    sync_api.expect(count_cell(overview, "default", "incoming")).to_have_text("0")
    assert page.evaluate("window.notReloaded") and overview.evaluate("window.notReloaded")


# ---- the pages at two widths, their pictures in docs/ (issue 21) ------------------------------

WIDTHS = {"wide": 1280, "phone": 375}


@pytest.fixture
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def seed_for_pictures(app: Spool, spool_root: Path) -> tuple[str, str]:
    """Done tasks on two queues, a task that failed twice, a rejected upload; some waiting."""
    for n in range(12):
        app.enqueue("add", args=[n, n])
    app.enqueue("echo", args=["to ada@example.org"], queue="mail")
    failed_id = app.enqueue("fail", args=["the SMTP server said 554"], max_retries=1)
    incoming = spool_root / "default" / "incoming"
    (incoming / "upload-7.json").write_bytes(b'{"task": "echo", "args": [1,')
    assert run_burst(spool_root).returncode == 0
    wait_until(lambda: Spool(root=spool_root).state_of(failed_id) == "failed", timeout=20)
    assert run_burst(spool_root).returncode == 0
    for n in range(3):
        app.enqueue("echo", args=[n])
    return failed_id, "upload-7"


def picture(page: sync_api.Page, tmp_path: Path, name: str) -> None:
    """Screenshot the whole page; keep it in $SPOOL_SCREENSHOT_DIR (docs/) when set."""
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("SPOOL_SCREENSHOT_DIR"):
        target = Path(os.environ["SPOOL_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target / f"{name}.png")


def fits(page: sync_api.Page, width: int) -> bool:
    """Nothing sticks out sideways: a wide table scrolls inside its own box."""
    return bool(page.evaluate(f"document.documentElement.scrollWidth <= {width}"))


@pytest.mark.parametrize("size", list(WIDTHS))
def test_the_dashboard_at_two_widths_shows_its_content_and_fits(
    size: str,
    app: Spool,
    spool_root: Path,
    server: WebServer,
    browser: sync_api.Browser,
    tmp_path: Path,
) -> None:
    width = WIDTHS[size]
    failed_id, rejected_id = seed_for_pictures(app, spool_root)
    context = browser.new_context(viewport={"width": width, "height": 800})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    expect = sync_api.expect

    page.goto(server.url + "/")
    expect(count_cell(page, "default", "done")).to_have_text("12")
    expect(count_cell(page, "mail", "done")).to_have_text("1")
    tops = page.locator("td.chart-cell:not([data-runtime]) svg.chart [data-top]")
    expect(tops).to_have_count(2)
    expect(tops.nth(0)).to_have_text("20/min")  # one scale: the busiest queue's round top
    expect(tops.nth(1)).to_have_text("20/min")
    expect(page.locator("td[data-runtime] svg.chart [data-top]")).to_have_count(2)
    for n in range(8):  # tasks that finish while the dashboard watches: their runtimes show
        app.enqueue("sleep_then_return", args=[0.01 * n, n], queue="mail")
    assert run_burst(spool_root).returncode == 0
    expect(page.locator('tr[data-queue="mail"] td[data-runtime] rect.p95').first).to_be_attached()
    expect(page.locator("#zone")).to_have_text("times: UTC")
    assert fits(page, width)
    picture(page, tmp_path, f"dashboard-overview-{size}")

    page.goto(f"{server.url}/queues/default?state=failed")
    expect(page.locator(f'tr[data-id="{failed_id}"]')).to_contain_text("RuntimeError")
    expect(page.locator(f'tr[data-id="{rejected_id}"]')).to_contain_text("Rejected")
    assert fits(page, width)
    picture(page, tmp_path, f"dashboard-failed-{size}")

    page.goto(f"{server.url}/tasks/{failed_id}")
    expect(page.locator("[data-args]")).to_contain_text('"the SMTP server said 554"')
    expect(page.locator("table.attempts tr[data-run]")).to_have_count(2)
    expect(page.locator("table.attempts details[open] pre")).to_contain_text("Traceback")
    expect(page.locator("[data-duration]")).to_contain_text("ms")
    assert fits(page, width)
    picture(page, tmp_path, f"dashboard-task-{size}")

    page.goto(f"{server.url}/tasks/{rejected_id}")
    expect(page.locator("[data-raw]")).to_have_text('{"task": "echo", "args": [1,')
    expect(page.locator("button", has_text="retry")).to_have_count(0)
    assert fits(page, width)
    picture(page, tmp_path, f"dashboard-rejected-{size}")

    page.goto(f"{server.url}/search?q=ada%40example")
    expect(page.locator("table.found tbody tr")).to_have_count(1)
    page.goto(server.url + "/docs/api")
    expect(page.locator('[data-endpoint="POST /api/tasks"]')).to_be_visible()
    assert fits(page, width)
    picture(page, tmp_path, f"dashboard-api-{size}")
    context.close()


def test_times_switch_to_the_browsers_zone_and_stay_24_hour(
    app: Spool, server: WebServer, browser: sync_api.Browser
) -> None:
    task_id = app.enqueue("echo")
    enqueued = app.show(task_id)["enqueued_at"]
    context = browser.new_context(timezone_id="Asia/Kolkata", locale="en-US")
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(f"{server.url}/tasks/{task_id}")
    shown = page.locator("time[data-at]").first
    expect = sync_api.expect
    expect(shown).to_have_text(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(enqueued)))
    page.click("#zone")
    india = time.gmtime(enqueued + 5.5 * 3600)
    expect(shown).to_have_text(time.strftime("%Y-%m-%d %H:%M:%S UTC+05:30", india))
    expect(page.locator("#zone")).to_have_text("times: UTC+05:30")
    page.reload()  # the choice is kept
    expect(page.locator("time[data-at]").first).to_contain_text("UTC+05:30")
    expect(page.locator("#updated")).to_have_text(
        re.compile(r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d UTC\+05:30$")
    )
    context.close()
