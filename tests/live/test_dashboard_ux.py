"""The dashboard's user-facing fixes a review in headless Chromium asked for: login errors, a long
algorithm name at 1280 px, NaN and infinities in the metrics chart, the priority box, a visible result of
a reorder, keyboard use, local times in the log, queue cards and charts kept while the server is down, a
gap in the chart between attempts, no /favicon.ico request.

Same fixtures as test_dashboard_browser.py (a real daphne server, Debian's Chromium); the tasks here are
made and moved along in this process by the worker's own functions (``execution.claim``,
``report_progress``, ``finish``), whose events reach the page through the real channel layer: no worker
is needed. A 503 or an unreachable server is one request answered by the browser (``page.route``).
"""
from __future__ import annotations

import math
import re
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import PASSWORD
from tests.live.test_dashboard_browser import DATA, TIMEOUT_MS, browser, log_in, row, shot  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WIDE = {"width": 1280, "height": 800}


def running_task(owner, *, algorithm: str = "demo.noop", max_retries: int = 0):
    """A task of a queue no worker consumes, claimed here as a worker would: RUNNING, its events published."""
    from jobs import execution
    from tests.conftest import queued_tasks

    task = queued_tasks(owner, 1, algorithm=algorithm, max_retries=max_retries)[0]
    assert execution.claim(task_id=task.id, worker="test@ux") is not None
    return task


def progress(task, **metrics) -> None:
    from jobs import execution

    assert execution.report_progress(task_id=task.id, percent=50.0, stage="train", message="", metrics=metrics)


def open_drawer(page, task_id) -> None:
    row(page, str(task_id)).locator("td.mono").click()
    page.wait_for_function(f"{DATA}.drawer.connection === 'live'", timeout=TIMEOUT_MS)


def test_login_tells_a_wrong_password_from_a_server_that_is_down_or_unreachable(live_web, browser, alice):
    """Before: a 503 said "Wrong username or password.", an unreachable server said nothing (an uncaught
    "Failed to fetch"); and every load asked for /favicon.ico (a 404): the page now names an icon."""
    page = browser.new_page()
    missing = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    page.goto(f"{live_web}/dashboard/")
    page.fill("input[name=username]", alice.username)
    page.fill("input[name=password]", PASSWORD)
    error = page.locator("form[data-testid=login-form] .error")
    submit = page.locator("form[data-testid=login-form] button[type=submit]")

    page.route("**/api/v1/auth/token/", lambda route: route.fulfill(status=503, json={"error": {"message": "x"}}))
    submit.click()
    error.filter(has_text="Server unavailable (HTTP 503), try again").wait_for(timeout=5000)
    page.unroute("**/api/v1/auth/token/")

    page.route("**/api/v1/auth/token/", lambda route: route.abort("connectionrefused"))
    submit.click()
    error.filter(has_text="Cannot reach the server, try again").wait_for(timeout=5000)
    page.unroute("**/api/v1/auth/token/")

    page.fill("input[name=password]", "not the password")
    submit.click()
    error.filter(has_text="Wrong username or password").wait_for(timeout=TIMEOUT_MS)
    assert not missing, missing
    # headless Chromium asks for no icon; a headed one asked for /favicon.ico (a 404) on every load
    assert page.locator("link[rel=icon]").count() == 1
    page.close()


def test_a_long_algorithm_name_keeps_every_column_and_the_drawers_close_button_on_screen(
        live_web, browser, alice):
    """At 1280 px a 150-character algorithm name pushed Stage, Prio, Queue and Cancel off the screen, the
    drawer's title pushed its Close button off, and the algorithm selects stretched across the form."""
    long_name = "research.experiments." + "very_long_component_" * 6 + "x" * 9
    task = running_task(alice, algorithm=long_name)
    page = browser.new_page(viewport=WIDE)
    log_in(page, live_web, alice)
    cancel = row(page, str(task.id)).locator("[data-testid=cancel]")
    cancel.wait_for(timeout=TIMEOUT_MS)
    box = cancel.bounding_box()
    assert box["x"] + box["width"] <= WIDE["width"], box
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDE["width"]
    assert row(page, str(task.id)).locator(f"td[title='{long_name}']").count() == 1  # the full name, on hover

    # the selects: as wide as a name of reasonable length, not as the longest one
    page.evaluate(f"{DATA}.algorithms.push({{name: '{long_name}', examples: []}})")
    page.wait_for_function(f"document.querySelectorAll('select[name=filter-algorithm] option[value=\"{long_name}\"]')"
                           ".length === 1", timeout=5000)
    for select in ("select[name=algorithm]", "select[name=filter-algorithm]"):
        assert page.locator(select).bounding_box()["width"] <= 320, select

    open_drawer(page, task.id)
    close = page.locator("[data-testid=drawer] header button")
    box = close.bounding_box()
    assert box["x"] + box["width"] <= WIDE["width"], box
    # nothing wider than the drawer (focusing Close would scroll it into view, cutting the title's start off)
    assert page.eval_on_selector("[data-testid=drawer]", "d => d.scrollWidth <= d.clientWidth")
    close.click()
    page.locator("[data-testid=drawer]").wait_for(state="hidden", timeout=5000)
    page.close()


def test_the_metrics_legend_shows_nan_and_infinity_and_the_chart_only_finite_points(live_web, browser, alice):
    """A diverging run reports loss NaN and grad_norm Infinity (the server sends the strings "NaN" and
    "Infinity": JSON has neither). Before, the legend showed only ``lr 0.1000``."""
    task = running_task(alice)
    progress(task, loss=1.5, grad_norm=3.0, lr=0.1)
    progress(task, loss=0.75, grad_norm=2.0, lr=0.1)
    progress(task, loss=math.nan, grad_norm=math.inf, lr=0.1)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    log_in(page, live_web, alice)
    open_drawer(page, task.id)
    legend = page.locator("[data-testid=drawer] .legend li")
    legend.filter(has_text="lr").wait_for(timeout=TIMEOUT_MS)
    assert sorted(legend.all_inner_texts()) == ["grad_norm Infinity", "loss NaN", "lr 0.1000"]
    shot(page, "ux-nan-legend")
    points = page.eval_on_selector_all("[data-testid=drawer] .chart polyline",
                                       "ls => ls.map(l => l.getAttribute('points'))")
    assert len(points) == 3 and all(p and re.fullmatch(r"[\d.,\s-]+", p) for p in points), points
    page.close()


def test_a_refused_or_blank_priority_puts_the_tasks_priority_back_in_the_box(live_web, browser, alice):
    """Before: 12 (out of 0–9) was refused by the server but stayed in the box, and a cleared box set
    priority 0 (``Number('')`` is 0)."""
    from jobs.models import Task
    from tests.conftest import queued_tasks

    task = queued_tasks(alice, 1)[0]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    alerts, patches = [], []
    page.on("dialog", lambda d: (alerts.append(d.message), d.accept()))
    page.on("request", lambda r: patches.append(r.post_data) if r.method == "PATCH" else None)
    log_in(page, live_web, alice)
    box = row(page, str(task.id)).locator("input.prio")
    box.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(f"{DATA}.tasks.some(t => t.priority === 5)", timeout=TIMEOUT_MS)

    box.fill("12")
    box.press("Tab")
    page.wait_for_function("() => document.querySelector('input.prio').value === '5'", timeout=5000)
    assert len(alerts) == 1 and len(patches) == 1  # the server said why

    for bad in ("", "2.5"):
        box.fill(bad)
        box.press("Tab")
        page.wait_for_function("() => document.querySelector('input.prio').value === '5'", timeout=5000)
    assert len(patches) == 1  # no request for those
    assert Task.objects.get(id=task.id).priority == 5

    box.fill("7")
    box.press("Tab")
    page.wait_for_function(f"{DATA}.tasks.some(t => t.priority === 7)", timeout=TIMEOUT_MS)
    assert Task.objects.get(id=task.id).priority == 7
    page.close()


def test_moving_a_task_to_the_front_or_dragging_it_says_where_it_went(live_web, browser, olga):
    """The table is sorted by creation time, so a reorder changed nothing on the screen: a short line by the
    table now says where the task went."""
    from jobs import services
    from tests.queueing.conftest import make_queue

    make_queue("held", paused=True)  # its tasks stay PENDING
    a, b, c = (services.submit(owner=olga, spec=services.build_spec(algorithm="demo.noop", queue="held"))[0]
               for _ in range(3))
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    log_in(page, live_web, olga)
    # the cards and statistics push the table down when they load: drag once they are in
    page.locator("article.queue[data-queue=held]").wait_for(timeout=TIMEOUT_MS)
    page.locator("section.stats").wait_for(timeout=TIMEOUT_MS)
    row(page, str(c.id)).locator("[data-testid=front]").click()
    notice = page.locator("[data-testid=moved]")
    notice.filter(has_text=f"{str(c.id)[:8]} moved to the front of held").wait_for(timeout=TIMEOUT_MS)
    # waiting order c, a, b: a dropped onto b takes b's place, the 3rd
    page.drag_and_drop(f"tr[data-task='{a.id}']", f"tr[data-task='{b.id}']")
    notice.filter(has_text=f"{str(a.id)[:8]} moved to position 3 in held").wait_for(timeout=TIMEOUT_MS)
    page.close()


def test_a_keyboard_user_opens_the_drawer_from_a_row_and_escape_closes_it(live_web, browser, alice):
    """Rows could not be focused (no keyboard way to the drawer) and Escape did nothing."""
    task = running_task(alice)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    log_in(page, live_web, alice)
    row(page, str(task.id)).wait_for(timeout=TIMEOUT_MS)
    page.focus("select[name=filter-algorithm]")
    page.keyboard.press("Tab")  # the next stop is the first row
    assert page.evaluate("document.activeElement.dataset.task") == str(task.id)
    drawer = page.locator("[data-testid=drawer]")
    for key in ("Enter", " "):
        page.keyboard.press(key)
        drawer.wait_for(timeout=5000)
        page.wait_for_function("document.querySelector('[data-testid=drawer]').contains(document.activeElement)",
                               timeout=5000)
        page.keyboard.press("Escape")
        drawer.wait_for(state="hidden", timeout=5000)
        assert page.evaluate("document.activeElement.dataset.task") == str(task.id)  # focus back on the row
    page.close()


def test_the_drawers_log_shows_local_times(live_web, browser, alice):
    """The log's times were UTC without saying so (the event's ISO timestamp cut to its time)."""
    from jobs import execution
    from jobs.models import TaskEvent

    task = running_task(alice)
    assert execution.append_log(task_id=task.id, lines=["epoch 1 done"])
    page = browser.new_page(viewport={"width": 1400, "height": 900}, timezone_id="Asia/Kathmandu")  # UTC+05:45
    log_in(page, live_web, alice)
    open_drawer(page, task.id)
    line = page.locator("[data-testid=log] div").filter(has_text="epoch 1 done")
    line.wait_for(timeout=TIMEOUT_MS)
    at = TaskEvent.objects.get(task=task, event="task.log").created_at
    local = at.astimezone(ZoneInfo("Asia/Kathmandu")).strftime("%H:%M:%S.%f")[:12]
    assert line.locator("span").first.inner_text() == local
    page.close()


def test_queue_cards_and_charts_stay_while_the_server_does_not_answer(live_web, browser, alice):
    """Before, any error emptied the queue cards and the statistics and reset the queue filter's select to
    "all queues" while the table stayed filtered; now they stay, marked stale, until the server answers
    again; a 404 (no queueing API) still removes the cards."""
    from queueing.models import Queue

    Queue.objects.get_or_create(name="default")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    log_in(page, live_web, alice)
    page.locator("article.queue[data-queue=default]").wait_for(timeout=TIMEOUT_MS)
    page.locator("section.stats").wait_for(timeout=TIMEOUT_MS)
    page.select_option("select[name=filter-queue]", "default")

    page.route("**/api/v1/queues/", lambda route: route.abort("connectionrefused"))
    page.route("**/api/v1/statistics/**", lambda route: route.fulfill(status=503, json={"error": {"message": "x"}}))
    page.evaluate(f"Promise.all([{DATA}.loadQueues(), {DATA}.loadStats()])")
    page.locator("section.queues.stale article.queue[data-queue=default]").wait_for(timeout=5000)
    page.locator("section.stats.stale").wait_for(timeout=5000)
    assert page.eval_on_selector("select[name=filter-queue]", "s => s.value") == "default"

    page.unroute("**/api/v1/queues/")
    page.unroute("**/api/v1/statistics/**")
    page.evaluate(f"Promise.all([{DATA}.loadQueues(), {DATA}.loadStats()])")
    assert page.locator("section.queues.stale, section.stats.stale").count() == 0

    page.route("**/api/v1/queues/", lambda route: route.fulfill(status=404, json={"error": {"message": "x"}}))
    page.evaluate(f"{DATA}.loadQueues()")
    page.locator("article.queue").first.wait_for(state="detached", timeout=5000)
    page.close()


def test_the_metrics_chart_starts_a_new_line_for_each_attempt(live_web, browser, alice):
    """A failed attempt and its retry were joined into one line: the loss jumped back up along it."""
    from jobs import execution
    from jobs.models import Status, Task

    task = running_task(alice, max_retries=1)
    progress(task, loss=1.0)
    progress(task, loss=0.5)
    assert execution.finish(task_id=task.id, outcome=execution.Outcome(status=Status.FAILED, error="boom"))
    assert Task.objects.get(id=task.id).status == Status.PENDING  # task.retrying
    Task.objects.filter(id=task.id).update(status=Status.QUEUED)  # as its dispatch would (no worker here)
    assert execution.claim(task_id=task.id, worker="test@ux") is not None  # task.started, attempt 2
    progress(task, loss=0.9)
    progress(task, loss=0.4)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    log_in(page, live_web, alice)
    open_drawer(page, task.id)
    page.locator("[data-testid=drawer] .legend li").filter(has_text="loss").wait_for(timeout=TIMEOUT_MS)
    lines = page.eval_on_selector_all("[data-testid=drawer] .chart polyline",
                                      "ls => ls.map(l => l.getAttribute('points').split(' ').length)")
    assert lines == [2, 2]
    page.close()


def sweep(owner, label: str = "sweep-42"):
    """Tasks of a sweep and one outside it: 2 QUEUED, 1 RUNNING and 2 FAILED of ``label``, and a QUEUED and a
    FAILED one without it."""
    from jobs import execution
    from jobs.models import Status, Task
    from tests.conftest import queued_tasks

    def failed():
        task = running_task(owner)
        assert execution.finish(task_id=task.id, outcome=execution.Outcome(status=Status.FAILED, error="boom"))
        return task

    waiting, running, done = queued_tasks(owner, 2), [running_task(owner)], [failed(), failed()]
    labelled = [*waiting, *running, *done]
    Task.objects.filter(id__in=[t.id for t in labelled]).update(labels=[label, "team-a"])
    other = [queued_tasks(owner, 1)[0], failed()]
    return {"waiting": waiting, "running": running, "failed": done, "labelled": labelled, "other": other}


def shown_ids(page) -> set[str]:
    return set(page.eval_on_selector_all("tr[data-task]", "rows => rows.map(r => r.dataset.task)"))


def filter_by_label(page, tasks, label: str = "sweep-42") -> None:
    page.locator("input[name=filter-label]").fill(label, timeout=5000)
    ids = sorted(str(t.id) for t in tasks)
    page.wait_for_function("ids => JSON.stringify([...document.querySelectorAll('tr[data-task]')]"
                           ".map(r => r.dataset.task).sort()) === JSON.stringify(ids)", arg=ids, timeout=TIMEOUT_MS)


def test_a_label_filter_shows_the_sweep_and_cancel_all_matching_cancels_only_it(live_web, browser, alice):
    """The dashboard had no label filter and no way to act on a sweep: one Cancel per row. Now the label
    filters the table (and the REST reload), the count says it counts loaded rows, and "Cancel all matching"
    sends the filters to the bulk cancel after a confirm, its answer shown on the page."""
    from jobs.models import Status, Task

    tasks = sweep(alice)
    page = browser.new_page(viewport=WIDE)
    dialogs, bodies = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/tasks/cancel/") else None)
    log_in(page, live_web, alice)
    page.wait_for_function("n => document.querySelectorAll('tr[data-task]').length === n", arg=7, timeout=TIMEOUT_MS)
    assert page.locator("[data-testid=cancel-matching]").is_hidden()  # no filter: nothing to act on
    with page.expect_request(lambda r: "/api/v1/tasks/?" in r.url and "label=sweep-42" in r.url, timeout=5000):
        filter_by_label(page, tasks["labelled"])  # and the REST reload asks for the label too
    assert page.locator("[data-testid=count]").inner_text() == "showing 5 of the 7 loaded"

    page.locator("[data-testid=cancel-matching]").click(timeout=5000)
    result = page.locator("[data-testid=bulk-result]")
    result.filter(has_text="cancelled 2, cancelling 1, already final 2").wait_for(timeout=TIMEOUT_MS)
    assert bodies == [{"filters": {"label": "sweep-42"}}]
    assert dialogs and "label sweep-42" in dialogs[0] and "shows 5 matching (3 not finished)" in dialogs[0]
    status = dict(Task.objects.values_list("id", "status"))
    assert {status[t.id] for t in tasks["waiting"]} == {Status.CANCELLED}
    assert Task.objects.get(id=tasks["running"][0].id).cancel_requested
    assert status[tasks["other"][0].id] == Status.QUEUED  # not of the sweep: left alone
    row(page, str(tasks["running"][0].id)).locator("[data-testid=cancelling]").wait_for(timeout=TIMEOUT_MS)
    for task in tasks["waiting"]:
        row(page, str(task.id)).locator("[data-testid=cancel]").wait_for(state="hidden", timeout=TIMEOUT_MS)
    shot(page, "ux-cancel-matching")
    page.locator("input[name=filter-label]").fill("")
    page.wait_for_function("n => document.querySelectorAll('tr[data-task]').length === n", arg=7, timeout=TIMEOUT_MS)
    assert page.locator("[data-testid=count]").inner_text() == "7 tasks"
    page.close()


def test_retry_failed_matching_re_runs_only_the_sweeps_failed_tasks_and_says_why_it_was_refused(
        live_web, browser, alice):
    """"Retry failed matching" retries the failed tasks of the filters (``status`` FAILED and TIMED_OUT, as the
    bulk retry requires); a 429 is shown beside the button with its Retry-After, not in an alert."""
    from jobs.models import Task

    tasks = sweep(alice)
    page = browser.new_page(viewport=WIDE)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    log_in(page, live_web, alice)
    filter_by_label(page, tasks["labelled"])
    button = page.locator("[data-testid=retry-matching]")
    result = page.locator("[data-testid=bulk-result]")

    page.route("**/api/v1/tasks/retry/", lambda route: route.fulfill(
        status=429, headers={"Retry-After": "7"}, json={"error": {"message": "slow down"}}))
    button.click(timeout=5000)
    result.filter(has_text="Too many requests: try again in 7 s").wait_for(timeout=5000)
    assert page.locator("[data-testid=bulk-result][role=alert]").count() == 1
    page.unroute("**/api/v1/tasks/retry/")
    page.route("**/api/v1/tasks/retry/", lambda route: route.fulfill(
        status=400, json={"error": {"message": "filters.status: required"}}))
    button.click()
    result.filter(has_text="retry refused: filters.status: required").wait_for(timeout=5000)
    assert not Task.objects.filter(retry_of__isnull=False).exists()
    page.unroute("**/api/v1/tasks/retry/")

    button.click()
    result.filter(has_text="retried 2 (new tasks), already retried 0").wait_for(timeout=TIMEOUT_MS)
    assert "FAILED or TIMED_OUT" in dialogs[-1] and "shows 2 of them" in dialogs[-1]
    retries = Task.objects.filter(retry_of__isnull=False)
    assert sorted(r.retry_of_id for r in retries) == sorted(t.id for t in tasks["failed"])
    # the new tasks carry the label: their rows join the filtered table
    filter_ids = {str(t.id) for t in tasks["labelled"]} | {str(r.id) for r in retries}
    page.wait_for_function("n => document.querySelectorAll('tr[data-task]').length === n", arg=7, timeout=TIMEOUT_MS)
    assert shown_ids(page) == filter_ids
    page.close()
