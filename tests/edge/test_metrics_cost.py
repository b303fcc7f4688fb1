"""A ``/metrics`` scrape must cost the same at a thousand tasks or two hundred million: no query it makes may
read the whole task table or the webhook delivery log (a Seq Scan there took minutes at 180M rows, Prometheus
timed the scrape out and ``conveyor_queue_depth``, what KEDA scales on, went missing with it).

Each query the scrape makes is planned again under ``EXPLAIN (FORMAT JSON)`` with the planner as it is
(``enable_seqscan`` left on) after ``ANALYZE`` of a few thousand rows, mostly finished long ago as in
production: a query that needs every row gets a Seq Scan there, which is what this test refuses."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db

FULL_SCAN_TABLES = {"jobs_task", "webhooks_delivery", "webhooks_deliveryattempt"}


def plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


@pytest.fixture
def history(django_user_model):
    """3,000 tasks finished over the last 90 days, a few recent ones, a small backlog; 3,000 delivered
    webhooks with their attempts and a few pending; all analyzed."""
    from django.utils import timezone

    from jobs.models import Task
    from queueing.models import Queue
    from webhooks.models import Delivery, DeliveryAttempt, Subscription

    owner = django_user_model.objects.create_user("cost-owner", password="pw-cost-owner")
    Queue.objects.get_or_create(name="cost")
    now = timezone.now()
    old = [Task(owner=owner, algorithm="demo.noop", queue_id="cost", status="SUCCEEDED", attempts=1,
                started_at=now - timedelta(days=1 + i % 89, seconds=5),
                finished_at=now - timedelta(days=1 + i % 89)) for i in range(3000)]
    recent = [Task(owner=owner, algorithm="demo.noop", queue_id="cost", status="FAILED", attempts=2,
                   started_at=now - timedelta(minutes=10), finished_at=now - timedelta(minutes=5))
              for _ in range(20)]
    waiting = [Task(owner=owner, algorithm="demo.noop", queue_id="cost", status="PENDING") for _ in range(20)]
    running = [Task(owner=owner, algorithm="demo.noop", queue_id="cost", status="RUNNING", attempts=1,
                    started_at=now) for _ in range(10)]
    Task.objects.bulk_create(old + recent + waiting + running)
    Task.objects.filter(status="SUCCEEDED").update(created_at=now - timedelta(days=90))

    subscription = Subscription.objects.create(owner=owner, url="http://hook.invalid/", events=["task.succeeded"],
                                               secret="s")
    deliveries = Delivery.objects.bulk_create(
        [Delivery(subscription=subscription, event="task.succeeded", payload={}, status="SUCCEEDED", attempts=1,
                  next_attempt_at=now, finished_at=now - timedelta(days=1 + i % 29)) for i in range(3000)]
        + [Delivery(subscription=subscription, event="task.succeeded", payload={}, status="PENDING", attempts=1,
                    next_attempt_at=now) for _ in range(10)])
    DeliveryAttempt.objects.bulk_create(
        [DeliveryAttempt(delivery=d, number=1, started_at=now,
                         outcome="SUCCEEDED" if d.status == "SUCCEEDED" else "RETRY") for d in deliveries])
    Delivery.objects.bulk_create(  # and the last hour's, which the scrape counts
        [Delivery(subscription=subscription, event="task.succeeded", payload={}, status=status, attempts=1,
                  next_attempt_at=now, finished_at=now - timedelta(minutes=5)) for status in ("SUCCEEDED", "FAILED")])
    with connection.cursor() as cursor:
        for table in sorted(FULL_SCAN_TABLES | {"queueing_queuecount", "queueing_queue"}):
            cursor.execute(f"ANALYZE {table}")
    return owner


def test_no_scrape_query_reads_a_whole_task_or_delivery_table(client, history):
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert b'conveyor_queue_depth{queue="cost"} 20.0' in response.content
    assert b'conveyor_tasks{queue="cost",state="FAILED"} 20.0' in response.content
    planned = 0
    with connection.cursor() as cursor:
        for query in captured.captured_queries:
            sql = query["sql"]
            if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
            (result,) = cursor.fetchone()
            (plan,) = json.loads(result) if isinstance(result, str) else result
            planned += 1
            scans = [node.get("Relation Name") for node in plan_nodes(plan["Plan"])
                     if node["Node Type"] == "Seq Scan"]
            assert not FULL_SCAN_TABLES & set(scans), f"a full scan of {scans} per scrape:\n{sql}"
    assert planned >= 5  # the task, queue, duration and webhook queries were all planned
