"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright, against a
real daphne server and worker. Screenshots go to test-artifacts/dashboard-*.png.

``make test`` installs Chromium (scripts/ensure_chromium.sh) and builds the page (``make install``).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ARTIFACTS, PASSWORD, ROOT, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 30_000


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure_chromium.sh (make test does)")
    if not (ROOT / "dashboard" / "dist" / "index.html").exists():
        pytest.fail("the dashboard is not built: run `make install`")
    # Playwright's sync API keeps an event loop in this thread; the fixtures' ORM teardown is still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def log_in(page, base: str, user) -> None:
    page.goto(f"{base}/dashboard/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("form[data-testid=login-form] button[type=submit]")
    page.wait_for_selector("[data-testid=connection].live", timeout=TIMEOUT_MS)


def submit(page, algorithm: str, params: str) -> str:
    """Submit through the form; returns the id of the row that appears."""
    before = set(page.eval_on_selector_all("tr[data-task]", "rows => rows.map(r => r.dataset.task)"))
    page.select_option("form[data-testid=submit-form] select[name=algorithm]", algorithm)
    page.fill("form[data-testid=submit-form] input[name=params]", params)
    page.click("form[data-testid=submit-form] button[type=submit]")
    page.wait_for_function(
        "n => document.querySelectorAll('tr[data-task]').length > n", arg=len(before), timeout=TIMEOUT_MS)
    after = page.eval_on_selector_all("tr[data-task]", "rows => rows.map(r => r.dataset.task)")
    return next(t for t in after if t not in before)


def row(page, task_id: str):
    return page.locator(f"tr[data-task='{task_id}']")


def test_user_watches_progress_to_100_cancels_another_and_operator_pauses_reorders_resumes(
        live_worker, live_web, browser, alice, olga):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    log_in(page, live_web, alice)

    # A task runs, and its row fills up live.
    hello = submit(page, "demo.hello", '{"seconds": 3, "steps": 12}')
    row(page, hello).locator("[data-testid=status]").filter(has_text="RUNNING").wait_for(timeout=TIMEOUT_MS)
    shot(page, "1-running")
    row(page, hello).locator("[data-testid=percent]").filter(has_text="100%").wait_for(timeout=TIMEOUT_MS)
    row(page, hello).locator("[data-testid=status]").filter(has_text="SUCCEEDED").wait_for(timeout=TIMEOUT_MS)

    # Another one is cancelled from its row.
    sleeper = submit(page, "demo.sleep", '{"seconds": 60}')
    row(page, sleeper).locator("[data-testid=status]").filter(has_text=re.compile("PENDING|QUEUED|RUNNING")).wait_for()
    row(page, sleeper).locator("[data-testid=cancel]").click()
    row(page, sleeper).locator("[data-testid=status]").filter(has_text="CANCELLED").wait_for(timeout=TIMEOUT_MS)

    # The drawer replays the finished task's log from the database.
    row(page, hello).click()
    page.locator("[data-testid=drawer] [data-testid=log]").filter(has_text="hello world").wait_for(timeout=TIMEOUT_MS)
    page.locator("[data-testid=drawer] [data-testid=log]").filter(has_text="succeeded").wait_for(timeout=TIMEOUT_MS)
    shot(page, "2-drawer")

    # A training run: its metrics are charted in the drawer as the epochs come in.
    train = submit(page, "ml.train_classifier", '{"dataset": "digits", "model": "mlp", "epochs": 25, "cv_folds": 0}')
    row(page, train).click()
    drawer = page.locator("[data-testid=drawer]")
    drawer.locator("[data-testid=log]").filter(has_text="succeeded").wait_for(timeout=60_000)
    drawer.locator(".legend li").filter(has_text="loss").first.wait_for(timeout=TIMEOUT_MS)
    shot(page, "3-metrics")
    page.close()

    # An operator pauses and resumes the queue from its card.
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    log_in(page, live_web, olga)
    card = page.locator("article.queue[data-queue=default]")
    card.wait_for(timeout=TIMEOUT_MS)
    # the wait-time chart has the minutes in which the tasks above finished
    page.locator("[data-testid=wait-chart] polyline").first.wait_for(state="attached", timeout=TIMEOUT_MS)
    card.locator("[data-testid=pause]").click()
    card.locator(".badge").filter(has_text="paused").wait_for(timeout=TIMEOUT_MS)
    assert _queue(live_web, olga)["paused"] is True

    # While the queue is paused its tasks wait: drag one onto the first, then move another to the front.
    first, second, third = (submit(page, "demo.noop", "{}") for _ in range(3))
    wait_for_order(live_web, olga, [first, second, third])
    page.drag_and_drop(f"tr[data-task='{third}']", f"tr[data-task='{first}']")
    wait_for_order(live_web, olga, [third, first, second])
    row(page, second).locator("[data-testid=front]").click()
    wait_for_order(live_web, olga, [second, third, first])
    shot(page, "4-operator-paused")
    card.locator("[data-testid=resume]").click()
    card.locator("[data-testid=pause]").wait_for(timeout=TIMEOUT_MS)
    assert _queue(live_web, olga)["paused"] is False
    page.close()


def test_dashboard_shows_reconnecting_and_recovers_after_the_socket_drops(live_web, browser, alice):
    page = browser.new_page()
    log_in(page, live_web, alice)
    # Drop the live socket from the page's side, as a network blip would.
    page.evaluate("() => document.querySelector('body')._x_dataStack[0].socket.close()")
    page.wait_for_selector("[data-testid=connection].reconnecting", timeout=TIMEOUT_MS)
    page.wait_for_selector("[data-testid=connection].live", timeout=TIMEOUT_MS)
    page.close()


def _get(base: str, user, path: str) -> dict:
    token = httpx.post(f"{base}/api/v1/auth/token/", json={"username": user.username, "password": PASSWORD}).json()
    response = httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {token['access']}"})
    assert response.status_code == 200, response.text
    return response.json()


def _queue(base: str, user) -> dict:
    return _get(base, user, "/api/v1/queues/default/")


def wait_for_order(base: str, user, expected: list[str]) -> None:
    """The default queue's waiting tasks, in the order the dispatcher will start them."""
    wait_until(lambda: [t["id"] for t in _get(base, user, "/api/v1/queues/default/tasks/")["tasks"]] == expected,
               timeout=15, interval=0.2, message=f"waiting order {expected}")
