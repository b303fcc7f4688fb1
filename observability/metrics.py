"""``conveyor_`` series for Prometheus, read from PostgreSQL at scrape time.

The database is the source of truth (DESIGN §1), so every web process reports the same numbers and no
worker needs a metrics port or a multiprocess directory. django-prometheus serves them on ``/metrics``
next to its own HTTP series. A scrape costs a few aggregate queries over the task table. Totals over
stored rows (retries, webhook attempts) are gauges, not counters: deleting a task or a subscription
lowers them, which a counter must never do (Prometheus would read a reset, and ``rate()`` a burst). The
wait and run time histograms are computed the same way, over the stored tasks at each scrape: they grow
as tasks finish and fall when tasks are deleted (a deleted user's tasks go with them), so read them as
gauges too (``histogram_quantile`` over the buckets as they are), never with ``rate()``/``increase()``.

Every queue (``queueing_queue``) has every series, zero when nothing is counted: ``conveyor_tasks`` has
every state of every queue, so a state that empties drops to 0 instead of disappearing (Prometheus would
keep showing the last value for five minutes, and an alert on it could never resolve to 0).

A queue's waiting tasks (PENDING or QUEUED) are each in one of three series: ``conveyor_queue_depth`` (can
start now: what KEDA scales workers on), ``conveyor_queue_delayed`` (``not_before`` still ahead) and
``conveyor_queue_paused_waiting`` (could start but for the queue's pause). A paused queue has no depth.

One series comes from Redis instead: ``conveyor_reconciler_last_run_age_seconds``, the age of the
reconciler's last completed pass (queueing/reconciler.py). It is absent when no pass is recorded or Redis
cannot be read, so an alert needs ``absent()`` besides the threshold.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

log = logging.getLogger(__name__)

BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)


def _rows(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.fetchall()


def _table_exists(name: str) -> bool:
    return name in connection.introspection.table_names()


class ConveyorCollector(Collector):
    def describe(self) -> list[Metric]:
        return []  # nothing at registration time: no query before the first scrape

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("conveyor_metrics_up", "1 when the last scrape could read the database")
        try:
            queues = [name for (name,) in _rows("SELECT name FROM queueing_queue ORDER BY name")]
            families = [*self._tasks(queues), *self._queues(), *self._durations(queues), *self._webhooks(),
                        *self._workers()]
        except DatabaseError as exc:
            log.warning("metrics scrape could not read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            yield from self._reconciler()  # from Redis: the database's trouble is not its own
            return
        up.add_metric([], 1)
        yield up
        yield from families
        yield from self._reconciler()

    def _tasks(self, queues: list[str]) -> list[Metric]:
        from jobs.models import Status

        tasks = GaugeMetricFamily("conveyor_tasks", "Tasks by state and queue", labels=["state", "queue"])
        retries = GaugeMetricFamily("conveyor_task_retries", "Attempts beyond the first of the stored tasks, by queue",
                                    labels=["queue"])
        counts: dict[tuple[str, str], int] = {}
        per_queue: dict[str, int] = dict.fromkeys(queues, 0)
        for queue, state, count, extra in _rows(
            "SELECT queue, status, count(*), coalesce(sum(greatest(attempts - 1, 0)), 0) "
            "FROM jobs_task GROUP BY queue, status"
        ):
            counts[(queue, state)] = count
            per_queue[queue] = per_queue.get(queue, 0) + int(extra)
        for queue in sorted(per_queue):  # every state of every queue: one that empties reads 0, not nothing
            for state in Status.values:
                tasks.add_metric([state, queue], counts.get((queue, state), 0))
            retries.add_metric([queue], per_queue[queue])
        return [tasks, retries]

    def _queues(self) -> list[Metric]:
        # Every PENDING or QUEUED task is in exactly one of depth, delayed and paused_waiting: a paused
        # queue's tasks cannot start on any worker, so they are no depth (KEDA would add workers for them).
        depth = GaugeMetricFamily("conveyor_queue_depth", "Tasks waiting that can start now (PENDING + QUEUED, "
                                  "not_before passed or unset, queue not paused)", labels=["queue"])
        delayed = GaugeMetricFamily("conveyor_queue_delayed", "PENDING tasks that cannot start yet (not_before "
                                    "in the future: a retry's backoff, a delayed submit)", labels=["queue"])
        held = GaugeMetricFamily("conveyor_queue_paused_waiting", "Tasks of a paused queue that could start but "
                                 "for the pause (the depth it has again on resume); 0 for a queue not paused",
                                 labels=["queue"])
        oldest = GaugeMetricFamily("conveyor_queue_oldest_wait_seconds", "How long the longest-waiting task that "
                                   "can start has waited since it could (0 when none waits or the queue is paused)",
                                   labels=["queue"])
        paused = GaugeMetricFamily("conveyor_queue_paused", "1 when the queue is paused", labels=["queue"])
        for name, is_paused, startable, later, oldest_age in _rows(
            "SELECT q.name, q.paused, count(t.id) FILTER (WHERE t.startable), "
            "count(t.id) FILTER (WHERE NOT t.startable), "
            "greatest(coalesce(extract(epoch FROM statement_timestamp() "
            "- min(coalesce(t.not_before, t.created_at)) FILTER (WHERE t.startable)), 0), 0) "
            "FROM queueing_queue q LEFT JOIN ("
            "  SELECT queue, id, not_before, created_at, "
            "  (not_before IS NULL OR not_before <= statement_timestamp()) AS startable "
            "  FROM jobs_task WHERE status IN ('PENDING', 'QUEUED')) t ON t.queue = q.name "
            "GROUP BY q.name, q.paused ORDER BY q.name"
        ):
            depth.add_metric([name], 0 if is_paused else startable)
            delayed.add_metric([name], later)
            held.add_metric([name], startable if is_paused else 0)
            oldest.add_metric([name], 0.0 if is_paused else float(oldest_age))
            paused.add_metric([name], int(is_paused))
        return [depth, delayed, held, oldest, paused]

    def _durations(self, queues: list[str]) -> list[Metric]:
        out = []
        for name, doc, start, end in (
            ("conveyor_task_wait_seconds", "Submit to start of the last attempt, over the stored tasks", "created_at",
             "started_at"),
            ("conveyor_task_run_seconds", "Start to finish of the stored finished tasks", "started_at", "finished_at"),
        ):
            family = HistogramMetricFamily(name, doc, labels=["queue"])
            buckets = ", ".join(f"count(*) FILTER (WHERE d <= {b})" for b in BUCKETS)
            rows = {row[0]: row[1:] for row in _rows(
                f"SELECT queue, {buckets}, count(*), coalesce(sum(d), 0) FROM ("
                f"  SELECT queue, extract(epoch FROM {end} - {start}) AS d FROM jobs_task"
                f"  WHERE {start} IS NOT NULL AND {end} IS NOT NULL) spans GROUP BY queue"
            )}
            for queue in sorted(set(queues) | set(rows)):  # a queue with none (yet, or any more): zeros
                *counts, total, seconds = rows.get(queue, (0,) * (len(BUCKETS) + 2))
                family.add_metric([queue], [(str(b), c) for b, c in zip(BUCKETS, counts)] + [("+Inf", total)],
                                  float(seconds))
            out.append(family)
        return out

    def _webhooks(self) -> list[Metric]:
        if not _table_exists("webhooks_delivery"):
            return []
        deliveries = GaugeMetricFamily("conveyor_webhook_deliveries", "Webhook deliveries by status",
                                       labels=["status"])
        from webhooks.models import DeliveryAttempt, DeliveryStatus

        stored = dict(_rows("SELECT status, count(*) FROM webhooks_delivery GROUP BY status"))
        for status in sorted({*DeliveryStatus.values, *stored}):  # every status, 0 when none
            deliveries.add_metric([status], stored.get(status, 0))
        attempts = GaugeMetricFamily("conveyor_webhook_attempts", "Stored webhook HTTP attempts by outcome",
                                     labels=["outcome"])
        failures = GaugeMetricFamily("conveyor_webhook_failures", "Stored webhook attempts that did not succeed")
        failed = 0
        stored = dict(_rows("SELECT outcome, count(*) FROM webhooks_deliveryattempt GROUP BY outcome"))
        for outcome in sorted({*DeliveryAttempt.Outcome.values, *stored}):
            count = stored.get(outcome, 0)
            attempts.add_metric([outcome], count)
            failed += count if outcome in {"RETRY", "FAILED", "LOST"} else 0
        failures.add_metric([], failed)
        return [deliveries, attempts, failures]

    def _workers(self) -> list[Metric]:
        if not _table_exists("queueing_workerrecord"):
            return []
        stale = settings.CONVEYOR.get("WORKER_STALE_SECONDS", 30.0)
        workers = GaugeMetricFamily("conveyor_workers", "Workers by state: alive (fresh heartbeat), stopped "
                                    "(shut down cleanly), dead (heartbeat stale without a clean stop)", labels=["state"])
        slots = GaugeMetricFamily("conveyor_worker_slots", "Concurrency of the live workers")
        (alive, stopped, dead, concurrency), = _rows(
            "SELECT count(*) FILTER (WHERE live), count(*) FILTER (WHERE stopped), "
            "count(*) FILTER (WHERE NOT live AND NOT stopped), "
            "coalesce(sum(concurrency) FILTER (WHERE live), 0) FROM ("
            "  SELECT concurrency, stopped_at IS NOT NULL AS stopped, stopped_at IS NULL AND last_heartbeat > "
            "statement_timestamp() - make_interval(secs => %s) AS live FROM queueing_workerrecord) w", [stale])
        workers.add_metric(["alive"], alive)
        workers.add_metric(["stopped"], stopped)  # a deploy's old workers: no reason to page anyone
        workers.add_metric(["dead"], dead)
        slots.add_metric([], concurrency)
        return [workers, slots]


    def _reconciler(self) -> list[Metric]:
        import redis

        from queueing import reconciler

        try:
            age = reconciler.last_pass_age()
        except redis.RedisError as exc:
            log.warning("metrics scrape could not read the reconciler's last pass from Redis: %s", exc)
            return []
        if age is None:
            return []  # never: absent, which an alert catches with absent()
        family = GaugeMetricFamily("conveyor_reconciler_last_run_age_seconds", "Seconds since the reconciler "
                                   "(beat's queueing.reconcile: lost messages re-sent, dead workers' tasks re-run) "
                                   "last completed a pass; absent when none is recorded")
        family.add_metric([], age)
        return [family]


_collector: ConveyorCollector | None = None


def register() -> None:
    """Once per process (``ObservabilityConfig.ready``)."""
    global _collector
    if _collector is None:
        _collector = ConveyorCollector()
        REGISTRY.register(_collector)
