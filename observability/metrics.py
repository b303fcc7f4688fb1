"""``conveyor_`` series for Prometheus, read from PostgreSQL at scrape time.

The database is the source of truth (DESIGN §1), so every web process reports the same numbers and no
worker needs a metrics port or a multiprocess directory. django-prometheus serves them on ``/metrics``
next to its own HTTP series. A scrape costs the same whatever the tables hold: no query reads the whole
task table or the webhook delivery log (tests/edge/test_metrics_cost.py plans each one). The active states
(PENDING, QUEUED, RUNNING) come from the counters the triggers keep (``QueueCount``), the waiting tasks from
the partial indexes on them; what is about finished tasks (the final states, retries, the wait and run
histograms) covers the tasks finished in the last ``RECENT_SECONDS`` (a range of task_finished_cover_idx);
of the webhook deliveries only the PENDING ones are counted (a partial index), with their attempts. These
are gauges, not counters: a task that finished an hour ago leaves them, and deleting one lowers them, which
a counter must never do (Prometheus would read a reset, and ``rate()`` a burst). Read the histograms as they
are (``histogram_quantile`` over the buckets: the last hour's distribution), never with
``rate()``/``increase()``.

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

# The finished tasks' series (final states, retries, the histograms) cover the tasks finished this recently:
# a range of task_finished_cover_idx, so a scrape costs the same at 1k tasks or 200M (a count over the whole
# table took minutes there, and Prometheus timed the scrape out, conveyor_queue_depth with it).
RECENT_SECONDS = 3600
_SINCE = "statement_timestamp() - make_interval(secs => %s)"

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
        from jobs.models import ACTIVE, FINAL, Status

        tasks = GaugeMetricFamily("conveyor_tasks", "Tasks by state and queue: PENDING, QUEUED and RUNNING all of "
                                  f"them; SUCCEEDED, FAILED, CANCELLED and TIMED_OUT those finished in the last "
                                  f"{RECENT_SECONDS} s", labels=["state", "queue"])
        retries = GaugeMetricFamily("conveyor_task_retries", "Attempts beyond the first of the active tasks and of "
                                    f"those finished in the last {RECENT_SECONDS} s, by queue", labels=["queue"])
        counts: dict[tuple[str, str], int] = {}
        per_queue: dict[str, int] = dict.fromkeys(queues, 0)
        # Active states from the counters the triggers keep (QueueCount, summed over its stripes), as the queue
        # API reads them: a few rows per queue, whatever the table holds.
        for queue, state, count in _rows(
            "SELECT queue, status, sum(n) FROM queueing_queuecount WHERE status = ANY(%s) GROUP BY queue, status "
            "HAVING sum(n) <> 0",
            [sorted(ACTIVE)],
        ):
            counts[(queue, state)] = int(count)
        # Final states: the recent finishes only, a range of task_finished_cover_idx (index-only).
        for queue, state, count in _rows(
            "SELECT queue, status, count(*) FROM jobs_task WHERE finished_at >= " + _SINCE
            + " AND status = ANY(%s) GROUP BY queue, status", [RECENT_SECONDS, sorted(FINAL)],
        ):
            counts[(queue, state)] = count
        # Retries: the active tasks (task_status_queue_idx) and the recent finishes, each read once.
        for queue, extra in _rows(
            "SELECT queue, coalesce(sum(greatest(attempts - 1, 0)), 0) FROM ("
            "  SELECT queue, attempts FROM jobs_task WHERE status = ANY(%s)"
            "  UNION ALL"
            "  SELECT queue, attempts FROM jobs_task WHERE finished_at >= " + _SINCE
            + "  AND status <> ALL(%s)) t GROUP BY queue", [sorted(ACTIVE), RECENT_SECONDS, sorted(ACTIVE)],
        ):
            per_queue[queue] = per_queue.get(queue, 0) + int(extra)
        for queue in sorted(per_queue.keys() | {q for q, _ in counts}):  # every state: one that empties reads 0
            for state in Status.values:
                tasks.add_metric([state, queue], counts.get((queue, state), 0))
            retries.add_metric([queue], per_queue.get(queue, 0))
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
            ("conveyor_task_wait_seconds", "Submit to start of the last attempt, over the tasks finished in the "
             f"last {RECENT_SECONDS} s", "created_at", "started_at"),
            ("conveyor_task_run_seconds", f"Start to finish of the tasks finished in the last {RECENT_SECONDS} s",
             "started_at", "finished_at"),
        ):
            family = HistogramMetricFamily(name, doc, labels=["queue"])
            buckets = ", ".join(f"count(*) FILTER (WHERE d <= {b})" for b in BUCKETS)
            rows = {row[0]: row[1:] for row in _rows(
                f"SELECT queue, {buckets}, count(*), coalesce(sum(d), 0) FROM ("
                f"  SELECT queue, extract(epoch FROM {end} - {start}) AS d FROM jobs_task"
                f"  WHERE finished_at >= {_SINCE} AND {start} IS NOT NULL AND {end} IS NOT NULL) spans GROUP BY queue",
                [RECENT_SECONDS],
            )}  # index-only: task_finished_cover_idx holds created_at, started_at and queue
            for queue in sorted(set(queues) | set(rows)):  # a queue with none (yet, or any more): zeros
                *counts, total, seconds = rows.get(queue, (0,) * (len(BUCKETS) + 2))
                family.add_metric([queue], [(str(b), c) for b, c in zip(BUCKETS, counts)] + [("+Inf", total)],
                                  float(seconds))
            out.append(family)
        return out

    def _webhooks(self) -> list[Metric]:
        if not _table_exists("webhooks_delivery"):
            return []
        from webhooks.models import DeliveryAttempt, DeliveryStatus

        # PENDING in full (webhook_delivery_due_idx is partial on them); SUCCEEDED and FAILED over the last
        # RECENT_SECONDS, a range of webhook_delivery_finished_idx (partial on them, by finished_at), as the
        # tasks' final states: never the whole log.
        deliveries = GaugeMetricFamily("conveyor_webhook_deliveries", "Webhook deliveries by status: PENDING all, "
                                       f"SUCCEEDED and FAILED those finished in the last {RECENT_SECONDS} s",
                                       labels=["status"])
        (pending,), = _rows("SELECT count(*) FROM webhooks_delivery WHERE status = %s", [DeliveryStatus.PENDING])
        deliveries.add_metric([DeliveryStatus.PENDING], pending)
        finished = dict(_rows(
            "SELECT status, count(*) FROM webhooks_delivery WHERE status IN (%s, %s) "
            "AND finished_at > statement_timestamp() - make_interval(secs => %s) GROUP BY status",
            [DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED, RECENT_SECONDS]))
        for status in (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED):
            deliveries.add_metric([status], finished.get(status, 0))
        attempts = GaugeMetricFamily("conveyor_webhook_attempts", "HTTP attempts of the webhook deliveries still "
                                     "PENDING, by outcome", labels=["outcome"])
        failures = GaugeMetricFamily("conveyor_webhook_failures", "HTTP attempts of the webhook deliveries still "
                                     "PENDING that did not succeed")
        failed = 0
        # Each pending delivery's attempts by their delivery_id index, never a hash join over the whole
        # attempt table (which the planner took at times even for a few thousand rows): a LATERAL subquery
        # that OFFSET 0 keeps from being flattened into an ordinary join.
        stored = dict(_rows(
            "SELECT a.outcome, count(*) FROM (SELECT id FROM webhooks_delivery WHERE status = %s) d "
            "CROSS JOIN LATERAL (SELECT outcome FROM webhooks_deliveryattempt WHERE delivery_id = d.id OFFSET 0) a "
            "GROUP BY a.outcome",
            [DeliveryStatus.PENDING],
        ))
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
