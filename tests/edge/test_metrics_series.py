"""The ``conveyor_`` series an alert or an autoscaler reads: every state of every queue is always there (0,
not missing, once nothing is in it), and the queue's depth and oldest wait count only the tasks that can
start now, the delayed ones (retry backoff, a later not_before) and those of a paused queue apart."""
from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.django_db

STATES = {"PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.content.decode()) for s in family.samples}


def of_queue(samples, name: str, queue: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (metric, labels), value in samples.items()
            if metric == name and ("queue", queue) in labels}


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("series-owner", password="pw-series-owner")


def make_tasks(owner, queue: str, count: int = 1, **fields):
    from jobs.models import Task
    from queueing.models import Queue

    Queue.objects.get_or_create(name=queue)
    extra = {k: fields.pop(k) for k in ("created_at",) if k in fields}
    tasks = Task.objects.bulk_create([Task(owner=owner, algorithm="demo.noop", queue_id=queue, **fields)
                                      for _ in range(count)])
    if extra:  # auto_now_add: set afterwards
        Task.objects.filter(id__in=[t.id for t in tasks]).update(**extra)
    return tasks


def test_every_state_of_every_queue_is_a_series_and_drops_to_zero(client, owner):
    from django.utils import timezone

    from jobs.models import Task

    (task,) = make_tasks(owner, "edge-series", status="RUNNING", started_at=timezone.now())
    samples = scrape(client)
    states = {dict(labels)["state"]: value
              for labels, value in of_queue(samples, "conveyor_tasks", "edge-series").items()}
    assert states == {state: (1 if state == "RUNNING" else 0) for state in STATES}

    Task.objects.filter(id=task.id).update(status="SUCCEEDED", finished_at=timezone.now())
    states = {dict(labels)["state"]: value
              for labels, value in of_queue(scrape(client), "conveyor_tasks", "edge-series").items()}
    assert states["RUNNING"] == 0 and states["SUCCEEDED"] == 1  # RUNNING reads 0: it did not vanish

    Task.objects.filter(id=task.id).delete()
    samples = scrape(client)
    assert set(of_queue(samples, "conveyor_tasks", "edge-series").values()) == {0}
    assert len(of_queue(samples, "conveyor_tasks", "edge-series")) == len(STATES)
    assert samples[("conveyor_task_retries", (("queue", "edge-series"),))] == 0
    # The histograms of a queue whose tasks are gone read 0 too (over the recent finishes still stored).
    for name in ("conveyor_task_run_seconds", "conveyor_task_wait_seconds"):
        assert samples[(f"{name}_count", (("queue", "edge-series"),))] == 0
        assert samples[(f"{name}_bucket", (("le", "+Inf"), ("queue", "edge-series")))] == 0


def test_webhook_series_have_every_outcome_and_the_pending_deliveries(client):
    """PENDING deliveries in full, SUCCEEDED and FAILED over the last hour (partial indexes, not the log)."""
    samples = scrape(client)
    deliveries = {dict(labels)["status"] for (name, labels) in samples if name == "conveyor_webhook_deliveries"}
    attempts = {dict(labels)["outcome"] for (name, labels) in samples if name == "conveyor_webhook_attempts"}
    assert deliveries == {"PENDING", "SUCCEEDED", "FAILED"}
    assert {"IN_FLIGHT", "SUCCEEDED", "RETRY", "FAILED", "LOST"} <= attempts


def test_queue_depth_and_oldest_wait_leave_out_tasks_that_cannot_start_yet(client, owner):
    """50 tasks in retry backoff (not_before tomorrow), submitted two hours ago: no work for a worker now,
    so no depth for the autoscaler and no two-hour wait for the oldest-wait alert; they are delayed."""
    from django.utils import timezone

    now = timezone.now()
    make_tasks(owner, "edge-delayed", 50, status="PENDING", not_before=now + timedelta(days=1),
               created_at=now - timedelta(hours=2))
    samples = scrape(client)
    assert samples[("conveyor_queue_depth", (("queue", "edge-delayed"),))] == 0
    assert samples[("conveyor_queue_delayed", (("queue", "edge-delayed"),))] == 50
    assert samples[("conveyor_queue_oldest_wait_seconds", (("queue", "edge-delayed"),))] == 0

    # One whose backoff ended five minutes ago (submitted an hour ago): startable, waiting since its not_before.
    make_tasks(owner, "edge-delayed", 1, status="PENDING", not_before=now - timedelta(minutes=5),
               created_at=now - timedelta(hours=1))
    # And one never delayed, QUEUED a minute ago: waiting too.
    make_tasks(owner, "edge-delayed", 1, status="QUEUED", created_at=now - timedelta(minutes=1))
    samples = scrape(client)
    assert samples[("conveyor_queue_depth", (("queue", "edge-delayed"),))] == 2
    assert samples[("conveyor_queue_delayed", (("queue", "edge-delayed"),))] == 50
    oldest = samples[("conveyor_queue_oldest_wait_seconds", (("queue", "edge-delayed"),))]
    assert 290 <= oldest <= 600, oldest  # five minutes, not the hour since the submit nor two hours


def test_a_paused_queue_has_no_depth_its_waiting_tasks_are_paused_waiting(client, owner):
    """KEDA scales workers on the depth: a paused queue's tasks cannot start on any worker, so they must not
    add workers. They show in ``conveyor_queue_paused_waiting`` (the depth the queue has again on resume);
    the delayed ones stay in ``conveyor_queue_delayed``; depth + delayed + paused_waiting = PENDING + QUEUED."""
    from django.utils import timezone

    from queueing.models import Queue

    now = timezone.now()
    make_tasks(owner, "edge-held", 2, status="PENDING", created_at=now - timedelta(minutes=10))
    make_tasks(owner, "edge-held", 1, status="PENDING", not_before=now + timedelta(days=1))
    Queue.objects.filter(name="edge-held").update(paused=True)

    def series(samples):
        return {name: samples[(f"conveyor_queue_{name}", (("queue", "edge-held"),))]
                for name in ("depth", "delayed", "paused_waiting", "oldest_wait_seconds", "paused")}

    assert series(scrape(client)) == {"depth": 0, "delayed": 1, "paused_waiting": 2, "oldest_wait_seconds": 0,
                                      "paused": 1}

    Queue.objects.filter(name="edge-held").update(paused=False)
    resumed = series(scrape(client))
    assert (resumed["depth"], resumed["delayed"], resumed["paused_waiting"], resumed["paused"]) == (2, 1, 0, 0)
    assert resumed["oldest_wait_seconds"] >= 590  # submitted ten minutes ago


def test_every_queue_has_a_paused_waiting_series(client, owner):
    make_tasks(owner, "edge-open", 1, status="PENDING")
    samples = scrape(client)
    assert samples[("conveyor_queue_paused_waiting", (("queue", "edge-open"),))] == 0
    assert samples[("conveyor_queue_paused_waiting", (("queue", "default"),))] == 0
