"""Retention that keeps its cost as the tables grow: the expiry of inline results
(``algorithms.results.expire``) and the webhook delivery log's retention (``webhooks.services.prune_log``)
take their batches oldest first from an index of their own (jobs/migrations/0011, webhooks/migrations/0007),
and the log's retention runs under a time budget instead of a fixed number of batches."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from algorithms import results
from algorithms.models import Artifact
from jobs.models import Task
from tests.conftest import unconsumed_queue
from webhooks import services
from webhooks.models import Delivery, DeliveryAttempt, Subscription

pytestmark = pytest.mark.django_db


def tasks(owner: Any, n: int, *, finished_ago: timedelta, status: str = "SUCCEEDED",
          result: Any = None) -> list[Task]:
    now, queue = timezone.now(), unconsumed_queue()
    return Task.objects.bulk_create(
        Task(owner=owner, algorithm="demo.noop", queue_id=queue, status=status, finished_at=now - finished_ago
             - timedelta(seconds=i), result=result if result is None else {**result, "i": i})
        for i in range(n))


@pytest.fixture
def hook(alice) -> Subscription:
    return Subscription.objects.create(owner=alice, url="http://127.0.0.1:9/", events=["task.*"], secret="s")


def deliveries(sub: Subscription, n: int, *, finished_ago: timedelta | None, status: str = "SUCCEEDED",
               attempts: bool = False) -> list[Delivery]:
    now = timezone.now()
    rows = Delivery.objects.bulk_create(
        Delivery(subscription=sub, event="task.progress", payload={"i": i}, status=status, next_attempt_at=now,
                 finished_at=None if finished_ago is None else now - finished_ago - timedelta(minutes=i))
        for i in range(n))
    if attempts:
        DeliveryAttempt.objects.bulk_create(
            DeliveryAttempt(delivery=row, number=1, outcome="SUCCEEDED", status_code=200, started_at=now)
            for row in rows)
    return rows


def plan_of(captured: CaptureQueriesContext, table: str, marker: str) -> str:
    """EXPLAIN of the first captured query that reads ``table`` and contains ``marker``."""
    sql = next(q["sql"] for q in captured.captured_queries
               if q["sql"].startswith("SELECT") and f'FROM "{table}"' in q["sql"] and marker in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


# --- results.expire: inline results -------------------------------------------------------------------------

def test_expire_clears_every_expired_inline_result_over_several_batches_and_keeps_fresh_ones(alice):
    expired = tasks(alice, 10, finished_ago=timedelta(days=40), result={"v": 1})
    fresh = tasks(alice, 4, finished_ago=timedelta(days=2), result={"v": 2})
    failed = tasks(alice, 2, finished_ago=timedelta(days=40), status="FAILED")

    assert results.expire(batch=3)["inline_results"] == 10

    assert not Task.objects.filter(id__in=[t.id for t in expired], result__isnull=False).exists()
    rows = Artifact.objects.filter(task__in=expired, kind=Artifact.Kind.RESULT, expired_at__isnull=False)
    assert rows.count() == 10
    assert Task.objects.filter(id__in=[t.id for t in fresh], result__isnull=False).count() == 4
    assert not Artifact.objects.filter(task__in=fresh + failed).exists()
    assert results.expire(batch=3)["inline_results"] == 0


def test_an_expiry_batch_reads_the_inline_result_index_not_the_table(alice):
    tasks(alice, 3000, finished_ago=timedelta(days=2), result={"v": 1})  # fresh: kept
    tasks(alice, 2000, finished_ago=timedelta(days=60), status="FAILED")  # no result
    tasks(alice, 30, finished_ago=timedelta(days=40), result={"v": 2})  # expired
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Task._meta.db_table}")

    with CaptureQueriesContext(connection) as captured:
        assert results.expire(batch=20)["inline_results"] == 30

    plan = plan_of(captured, Task._meta.db_table, "SKIP LOCKED")
    assert "task_inline_result_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


# --- services.prune_log: the delivery log -------------------------------------------------------------------

@pytest.fixture
def retention_30_days(settings) -> None:
    settings.WEBHOOKS = {**settings.WEBHOOKS, "LOG_RETENTION_DAYS": 30}


def test_prune_log_deletes_the_whole_backlog_in_one_run_within_its_budget(hook, retention_30_days, monkeypatch):
    monkeypatch.setattr(services, "PRUNE_BATCH", 2)  # 23 batches: more than the 20 a run used to stop at
    old = deliveries(hook, 45, finished_ago=timedelta(days=31), attempts=True)
    deliveries(hook, 3, finished_ago=timedelta(days=31), status="FAILED")
    recent = deliveries(hook, 5, finished_ago=timedelta(days=29))
    waiting = deliveries(hook, 2, finished_ago=None, status="PENDING")

    assert services.prune_log() == 48

    assert set(Delivery.objects.values_list("id", flat=True)) == {d.id for d in recent + waiting}
    assert not DeliveryAttempt.objects.filter(delivery_id__in=[d.id for d in old]).exists()


def test_prune_log_goes_oldest_first_and_stops_starting_batches_when_its_budget_is_spent(
        hook, retention_30_days, monkeypatch):
    monkeypatch.setattr(services, "PRUNE_BATCH", 10)
    monkeypatch.setattr(services, "PRUNE_SECONDS", 0.0)  # spent at once: one batch runs
    rows = deliveries(hook, 45, finished_ago=timedelta(days=31), attempts=True)  # rows[i] finished i min earlier
    oldest = {d.id for d in rows[-10:]}

    assert services.prune_log() == 10

    left = set(Delivery.objects.values_list("id", flat=True))
    assert left == {d.id for d in rows} - oldest
    assert not DeliveryAttempt.objects.filter(delivery_id__in=oldest).exists()
    assert DeliveryAttempt.objects.count() == 35
    monkeypatch.setattr(services, "PRUNE_SECONDS", 60.0)
    assert services.prune_log() == 35 and not Delivery.objects.exists()


def test_a_prune_batch_reads_the_finished_index_not_the_table(hook, retention_30_days, monkeypatch):
    monkeypatch.setattr(services, "PRUNE_BATCH", 20)
    deliveries(hook, 3000, finished_ago=timedelta(days=2))  # recent: kept
    deliveries(hook, 1000, finished_ago=None, status="PENDING")
    deliveries(hook, 30, finished_ago=timedelta(days=31))  # past the retention
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Delivery._meta.db_table}")

    with CaptureQueriesContext(connection) as captured:
        assert services.prune_log() == 30

    plan = plan_of(captured, Delivery._meta.db_table, "LIMIT")
    assert "webhook_delivery_finished_idx" in plan, plan
    assert "Seq Scan" not in plan, plan
