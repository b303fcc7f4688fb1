"""``conveyor_`` series for Prometheus, read from PostgreSQL at scrape time.

The database is the source of truth (DESIGN §1), so every web process reports the same numbers and no
worker needs a metrics port or a multiprocess directory. django-prometheus serves them on ``/metrics``
next to its own HTTP series. A scrape costs a few aggregate queries over the task table. Totals over
stored rows (retries, webhook attempts) are gauges, not counters: deleting a task or a subscription
lowers them, which a counter must never do (Prometheus would read a reset, and ``rate()`` a burst). The
wait and run time histograms are cumulative over the stored tasks, so they only grow until old tasks are
deleted.
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
            families = [*self._tasks(), *self._queues(), *self._durations(), *self._webhooks(), *self._workers()]
        except DatabaseError as exc:
            log.warning("metrics scrape could not read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _tasks(self) -> list[Metric]:
        tasks = GaugeMetricFamily("conveyor_tasks", "Tasks by state and queue", labels=["state", "queue"])
        retries = GaugeMetricFamily("conveyor_task_retries", "Attempts beyond the first of the stored tasks, by queue",
                                    labels=["queue"])
        per_queue: dict[str, int] = {}
        for queue, state, count, extra in _rows(
            "SELECT queue, status, count(*), coalesce(sum(greatest(attempts - 1, 0)), 0) "
            "FROM jobs_task GROUP BY queue, status"
        ):
            tasks.add_metric([state, queue], count)
            per_queue[queue] = per_queue.get(queue, 0) + int(extra)
        for queue, extra in sorted(per_queue.items()):
            retries.add_metric([queue], extra)
        return [tasks, retries]

    def _queues(self) -> list[Metric]:
        depth = GaugeMetricFamily("conveyor_queue_depth", "Tasks waiting (PENDING + QUEUED)", labels=["queue"])
        oldest = GaugeMetricFamily("conveyor_queue_oldest_wait_seconds",
                                   "Age of the oldest waiting task (0 when none waits)", labels=["queue"])
        paused = GaugeMetricFamily("conveyor_queue_paused", "1 when the queue is paused", labels=["queue"])
        for name, is_paused, waiting, oldest_age in _rows(
            "SELECT q.name, q.paused, count(t.id), "
            "greatest(coalesce(extract(epoch FROM statement_timestamp() - min(t.created_at)), 0), 0) "
            "FROM queueing_queue q LEFT JOIN jobs_task t ON t.queue = q.name AND t.status IN ('PENDING', 'QUEUED') "
            "GROUP BY q.name, q.paused ORDER BY q.name"
        ):
            depth.add_metric([name], waiting)
            oldest.add_metric([name], float(oldest_age))
            paused.add_metric([name], int(is_paused))
        return [depth, oldest, paused]

    def _durations(self) -> list[Metric]:
        out = []
        for name, doc, start, end in (
            ("conveyor_task_wait_seconds", "Submit to start of the last attempt", "created_at", "started_at"),
            ("conveyor_task_run_seconds", "Start to finish of finished tasks", "started_at", "finished_at"),
        ):
            family = HistogramMetricFamily(name, doc, labels=["queue"])
            buckets = ", ".join(f"count(*) FILTER (WHERE d <= {b})" for b in BUCKETS)
            for row in _rows(
                f"SELECT queue, {buckets}, count(*), coalesce(sum(d), 0) FROM ("
                f"  SELECT queue, extract(epoch FROM {end} - {start}) AS d FROM jobs_task"
                f"  WHERE {start} IS NOT NULL AND {end} IS NOT NULL) spans GROUP BY queue ORDER BY queue"
            ):
                queue, counts, total, seconds = row[0], row[1:-2], row[-2], row[-1]
                family.add_metric([queue], [(str(b), c) for b, c in zip(BUCKETS, counts)] + [("+Inf", total)],
                                  float(seconds))
            out.append(family)
        return out

    def _webhooks(self) -> list[Metric]:
        if not _table_exists("webhooks_delivery"):
            return []
        deliveries = GaugeMetricFamily("conveyor_webhook_deliveries", "Webhook deliveries by status",
                                       labels=["status"])
        for status, count in _rows("SELECT status, count(*) FROM webhooks_delivery GROUP BY status ORDER BY status"):
            deliveries.add_metric([status], count)
        attempts = GaugeMetricFamily("conveyor_webhook_attempts", "Stored webhook HTTP attempts by outcome",
                                     labels=["outcome"])
        failures = GaugeMetricFamily("conveyor_webhook_failures", "Stored webhook attempts that did not succeed")
        failed = 0
        for outcome, count in _rows(
            "SELECT outcome, count(*) FROM webhooks_deliveryattempt GROUP BY outcome ORDER BY outcome"
        ):
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


_collector: ConveyorCollector | None = None


def register() -> None:
    """Once per process (``ObservabilityConfig.ready``)."""
    global _collector
    if _collector is None:
        _collector = ConveyorCollector()
        REGISTRY.register(_collector)
