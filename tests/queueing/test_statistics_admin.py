"""Statistics over a window, and the admin pages operators use."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from jobs.models import Status, Task
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db


def finished_task(owner, *, status: str, wait: float, run: float, algorithm: str = "demo.noop",
                  queue: str = "q1", ago: float = 60) -> Task:
    created = timezone.now() - timedelta(seconds=ago)
    started = created + timedelta(seconds=wait)
    task = Task.objects.create(owner=owner, algorithm=algorithm, queue_id=queue, status=status,
                               started_at=started, finished_at=started + timedelta(seconds=run))
    Task.objects.filter(id=task.id).update(created_at=created)  # auto_now_add ignores a given value
    return task


def test_statistics_counts_percentiles_and_failure_rate_for_own_tasks(alice, bob, olga, api):
    make_queue("q1")
    make_queue("q2")
    for i in range(1, 11):
        finished_task(alice, status=Status.SUCCEEDED, wait=i, run=10 * i)
    finished_task(alice, status=Status.FAILED, wait=1, run=1, queue="q2", algorithm="demo.flaky")
    finished_task(alice, status=Status.TIMED_OUT, wait=1, run=1, queue="q2")
    finished_task(bob, status=Status.SUCCEEDED, wait=1, run=1)
    finished_task(alice, status=Status.SUCCEEDED, wait=1, run=1, ago=3 * 3600)

    body = api(alice).get("/api/v1/statistics/tasks/?window=1h").json()
    assert body["by_status"]["SUCCEEDED"] == 10 and body["by_status"]["FAILED"] == 1
    assert body["by_status"]["TIMED_OUT"] == 1 and body["by_status"]["PENDING"] == 0
    assert body["by_queue"] == {"q1": 10, "q2": 2}
    assert body["by_algorithm"] == {"demo.noop": 11, "demo.flaky": 1}
    assert body["failure_rate"] == round(2 / 12, 4)
    assert body["wait_seconds"]["p50"] == pytest.approx(4.5, abs=0.6)
    assert body["run_seconds"]["p99"] == pytest.approx(100, abs=2)
    assert sum(m["finished"] for m in body["throughput"]) == 12
    # wait over time: each minute's p50/p95 of the tasks that finished in it (the dashboard's chart)
    minutes = [m for m in body["throughput"] if m["wait_p95_seconds"] is not None]
    assert minutes and max(m["wait_p95_seconds"] for m in minutes) <= 10
    assert all(m["wait_p50_seconds"] <= m["wait_p95_seconds"] for m in minutes)
    assert body["throughput_per_minute"] == pytest.approx(12 / 60, abs=0.01)

    everyone = api(olga).get("/api/v1/statistics/tasks/?window=1h").json()
    assert everyone["by_status"]["SUCCEEDED"] == 11
    only_bob = api(olga).get("/api/v1/statistics/tasks/?window=1h&user=bob").json()
    assert only_bob["by_status"]["SUCCEEDED"] == 1
    # A plain user may name herself only: another user is a 403 naming ?user= (it was ignored, and the
    # answer, her own statistics, looked like bob's).
    refused = api(alice).get("/api/v1/statistics/tasks/?user=bob")
    assert refused.status_code == 403 and refused.json()["error"]["fields"] == {
        "user": ["only operators may read another user's statistics"]}
    assert refused.json()["error"]["code"] == "permission_denied"  # as every other 403 (docs/queues.md)
    assert api(alice).get("/api/v1/statistics/tasks/?user=alice").json()["by_status"]["SUCCEEDED"] == 10
    assert api(alice).get("/api/v1/statistics/tasks/?window=4h").json()["by_status"]["SUCCEEDED"] == 11
    bad = api(alice).get("/api/v1/statistics/tasks/?window=soon")
    assert bad.status_code == 400 and bad.json()["error"]["fields"] == {"window": ["like 15m, 1h, 24h or 7d"]}
    for huge in ("32d", "99999999999999999999d", "9" * 5000, "0000000000001d"):
        for path in ("/api/v1/statistics/tasks/", "/api/v1/system/stats/"):
            too_long = api(olga).get(f"{path}?window={huge}")
            assert too_long.status_code == (200 if huge.startswith("0") else 400), (path, huge[:30])
            if too_long.status_code == 400:
                assert too_long.json()["error"]["fields"] == {"window": ["at most 31d"]}

    system = api(olga).get("/api/v1/system/stats/").json()
    assert {q["name"] for q in system["queues"]} >= {"q1", "q2"}
    assert system["tasks"]["by_status"]["SUCCEEDED"] == 11


def test_operator_with_staff_login_pauses_queue_and_cancels_task_in_admin(olga, alice, api):
    make_queue("q1")
    User.objects.filter(id=olga.id).update(is_staff=True)
    task_id = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop", "queue": "q1"}, format="json").json()["id"]
    browser = Client()
    browser.force_login(User.objects.get(id=olga.id))

    assert browser.get("/admin/jobs/task/?status__exact=PENDING&q=" + task_id).status_code == 200
    assert browser.get(f"/admin/jobs/task/{task_id}/change/").status_code == 200
    assert browser.get("/admin/queueing/workerrecord/").status_code == 200

    response = browser.post("/admin/queueing/queue/", {"action": "pause",
                                                       "_selected_action": [str(make_queue("q1").pk)]})
    assert response.status_code == 302
    assert make_queue("q1").paused is True
    browser.post("/admin/jobs/task/", {"action": "raise_priority", "_selected_action": [task_id]})
    assert Task.objects.get(id=task_id).priority == 6
    browser.post("/admin/jobs/task/", {"action": "cancel", "_selected_action": [task_id]})
    assert Task.objects.get(id=task_id).status == Status.CANCELLED
    events = list(Task.objects.get(id=task_id).events.values_list("event", flat=True))
    assert events[-2:] == ["task.priority_changed", "task.cancelled"]


def test_the_admin_task_list_does_not_load_results_or_params(olga, alice, api):
    """A page of the change list shows none of them, and inline results reach 256 KiB each."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_queue("q1")
    User.objects.filter(id=olga.id).update(is_staff=True, is_superuser=True)
    task_id = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop", "queue": "q1"}, format="json").json()["id"]
    Task.objects.filter(id=task_id).update(result={"weights": "x" * 200_000})
    browser = Client()
    browser.force_login(User.objects.get(id=olga.id))

    with CaptureQueriesContext(connection) as queries:
        page = browser.get("/admin/jobs/task/")
    assert page.status_code == 200 and task_id in page.content.decode()
    listed = [q["sql"] for q in queries if 'FROM "jobs_task"' in q["sql"]]
    assert listed and not any('"jobs_task"."result"' in sql or '"jobs_task"."params"' in sql for sql in listed)
    detail = browser.get(f"/admin/jobs/task/{task_id}/change/")  # the row's own page still shows them
    assert detail.status_code == 200 and "x" * 1000 in detail.content.decode()
