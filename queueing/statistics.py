"""Task statistics over a time window: counts, throughput per minute, wait/run percentiles.

Bounded by the window on indexed columns (``created_at``, ``finished_at``), so the cost follows the
number of tasks in the window, not the size of the table.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from config.errors import InvalidInput
from jobs.models import Status, Task
from queueing.models import TaskMinuteCount

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW = timedelta(days=31)


def parse_window(value: str | None, default: str = "1h") -> timedelta:
    """``"15m"``, ``"1h"``, ``"7d"`` (or plain seconds) → timedelta; at most 31 days."""
    text = (value or default).strip().lower()
    match = re.fullmatch(r"0*(\d+)([smhd]?)", text)  # without leading zeros
    if not match or match.group(1) == "0":
        raise InvalidInput("window: like 15m, 1h, 24h or 7d", fields={"window": ["like 15m, 1h, 24h or 7d"]})
    number, unit = match.group(1), _UNITS[match.group(2) or "s"]
    # the digits counted first: int() refuses past 4300 of them, timedelta past 10**9 days
    if len(number) > 9 or int(number) * unit > MAX_WINDOW.total_seconds():
        raise InvalidInput("window: at most 31d", fields={"window": ["at most 31d"]})
    seconds = int(number) * unit
    return timedelta(seconds=seconds)


_PERCENTILES_SQL = """
SELECT
  percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - created_at)),
  percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished_at - started_at))
FROM ({inner}) t WHERE started_at IS NOT NULL
"""


def _percentiles(qs: QuerySet[Task]) -> dict[str, dict[str, float | None]]:
    inner, params = qs.values("created_at", "started_at", "finished_at").query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute(_PERCENTILES_SQL.format(inner=inner), params)
        wait, run = cur.fetchone()
    names = ("p50", "p95", "p99")

    def shape(values: list[float] | None) -> dict[str, float | None]:
        return {k: (round(float(v), 4) if v is not None else None) for k, v in zip(names, values or [None] * 3)}

    return {"wait_seconds": shape(wait), "run_seconds": shape(run)}


_PER_MINUTE_SQL = """
SELECT date_trunc('minute', finished_at) AS minute, count(*),
  percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - created_at))
FROM ({inner}) t GROUP BY 1 ORDER BY 1
"""


def _per_minute(finished: QuerySet[Task]) -> list[dict[str, Any]]:
    """Finishes per minute, with the wait (submit → start) p50/p95 of the tasks that finished in it;
    tasks cancelled before they started count as finishes but have no wait."""
    inner, params = finished.values("created_at", "started_at", "finished_at").query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute(_PER_MINUTE_SQL.format(inner=inner), params)
        rows = cur.fetchall()
    return [{"minute": minute, "finished": n,
             "wait_p50_seconds": round(float(waits[0]), 4) if waits else None,
             "wait_p95_seconds": round(float(waits[1]), 4) if waits else None}
            for minute, n, waits in rows]


_CREATED_SQL = """
SELECT GROUPING(status, queue, algorithm), status, queue, algorithm, count(*)
FROM ({inner}) t GROUP BY GROUPING SETS ((status), (queue), (algorithm))
"""


def _created_counts(created: QuerySet[Task]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Counts by status, queue and algorithm in one pass over the window (one index-only scan)."""
    inner, params = created.values("status", "queue", "algorithm").query.sql_with_params()
    by_status = {s: 0 for s in Status.values}
    by_queue: dict[str, int] = {}
    by_algorithm: dict[str, int] = {}
    with connection.cursor() as cur:
        cur.execute(_CREATED_SQL.format(inner=inner), params)
        for grouping, status, queue, algorithm, n in cur.fetchall():
            # GROUPING() sets a bit for each column *not* grouped: 3 = by status, 5 = by queue, 6 = by algorithm.
            if grouping == 3:
                by_status[status] = n
            elif grouping == 5:
                by_queue[queue] = n
            else:
                by_algorithm[algorithm] = n
    return by_status, by_queue, by_algorithm


def _rollup_counts(since: datetime) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """All tasks' counts from the per-minute rollup (whole minutes) plus an exact scan of the first,
    partial minute: a few hundred rows whatever the number of tasks in the window."""
    boundary = since.replace(second=0, microsecond=0) + timedelta(minutes=1 if since.second or since.microsecond else 0)
    by_status, by_queue, by_algorithm = _created_counts(Task.objects.filter(created_at__gte=since, created_at__lt=boundary))
    rows = (TaskMinuteCount.objects.filter(minute__gte=boundary).values_list("status", "queue", "algorithm")
            .annotate(n=Sum("n")).order_by())
    for status, queue, algorithm, n in rows:
        if n:
            by_status[status] = by_status.get(status, 0) + n
            by_queue[queue] = by_queue.get(queue, 0) + n
            by_algorithm[algorithm] = by_algorithm.get(algorithm, 0) + n
    return by_status, by_queue, by_algorithm


def task_statistics(*, window: timedelta, owner: Any = None) -> dict[str, Any]:
    """Counts of tasks created in the window; throughput, percentiles and failure rate of tasks
    that finished in it. ``owner=None`` means every task (operators)."""
    now = timezone.now()
    since = now - window
    tasks = Task.objects.all() if owner is None else Task.objects.filter(owner=owner)
    finished = tasks.filter(finished_at__gte=since)
    if owner is None:
        by_status, by_queue, by_algorithm = _rollup_counts(since)
    else:  # one owner's tasks: bounded by the owner index
        by_status, by_queue, by_algorithm = _created_counts(tasks.filter(created_at__gte=since))
    done = dict(finished.values_list("status").annotate(n=Count("*")).order_by())
    total_done = sum(done.values())
    failed = done.get(Status.FAILED, 0) + done.get(Status.TIMED_OUT, 0)
    per_minute = _per_minute(finished)
    minutes = max(window.total_seconds() / 60.0, 1 / 60)
    return {
        "window_seconds": int(window.total_seconds()),
        "since": since,
        "until": now,
        "by_status": by_status,
        "by_queue": by_queue,
        "by_algorithm": by_algorithm,
        "finished": done,
        "throughput_per_minute": round(total_done / minutes, 3),
        "throughput": per_minute,
        **_percentiles(finished),
        "failure_rate": round(failed / total_done, 4) if total_done else None,
    }
