"""The dispatcher: moves PENDING tasks to QUEUED and hands their ids to the broker.

Per queue, in the order of ``queueing.ordering`` (pinned by a reorder, then priority, then
round-robin between owners, then submit time), only up to the queue's concurrency window
(QUEUED + RUNNING ≤ concurrency) and each owner's cap, never for a paused queue. The queue row's lock serialises
dispatchers of one queue so two of them cannot both fill the same free slots; ``SKIP LOCKED`` on the
task rows steps around rows that a cancel or priority change holds at that moment.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from jobs import transitions
from jobs.models import Status, Task
from queueing import ordering

log = logging.getLogger(__name__)


def dispatch(queue_names: Iterable[str] | None = None) -> int:
    """Dispatch every named queue (all queues with waiting tasks when None). Returns tasks queued."""
    if queue_names is None:
        queue_names = (
            Task.objects.filter(status=Status.PENDING).values_list("queue", flat=True).distinct().order_by()
        )
    return sum(_dispatch_queue(name) for name in list(queue_names))


# It runs after every submit and every finish: plain SQL (the ORM's query building cost more than the
# queries themselves). The candidates come in ``ordering.waiting()``'s order.
_LOCK_SQL = "SELECT paused, concurrency, user_concurrency FROM queueing_queue WHERE name = %s FOR UPDATE"
_BUSY_SQL = "SELECT owner_id, count(*) FROM jobs_task WHERE queue = %s AND status = ANY(%s) GROUP BY owner_id"
_CANDIDATES_SQL = (
    "SELECT id, owner_id FROM jobs_task WHERE queue = %s AND status = %s AND (not_before IS NULL OR not_before <= %s) "
    f"ORDER BY {ordering.ORDER_SQL} LIMIT %s FOR UPDATE SKIP LOCKED"
)


def _dispatch_queue(name: str) -> int:
    with transaction.atomic(), connection.cursor() as cur:
        transitions.relax_commit()  # a lost dispatch leaves the task PENDING: dispatched again
        cur.execute(_LOCK_SQL, [name])
        queue = cur.fetchone()
        if queue is None or queue[0]:  # no such queue, or paused
            return 0
        _, concurrency, cap = queue
        cur.execute(_BUSY_SQL, [name, [Status.QUEUED, Status.RUNNING]])
        busy = dict(cur.fetchall())
        room = concurrency - sum(busy.values())
        if room <= 0:
            return 0
        now = timezone.now()
        # With a per-owner cap some candidates may be skipped, so look a little further ahead.
        limit = room if not cap else room + settings.CONVEYOR["DISPATCH_SCAN_AHEAD"]
        cur.execute(_CANDIDATES_SQL, [name, Status.PENDING, now, limit])
        candidates = cur.fetchall()
        ids = _pick(candidates, busy, room=room, cap=cap)
        tasks = transitions.apply(ids, frm=[Status.PENDING], to=Status.QUEUED, event="task.queued",
                                  values={"queued_at": now, "not_before": None, "queue_position": None})
        if tasks:
            sent = [str(t.id) for t in tasks]
            transaction.on_commit(lambda: send(name, sent), robust=True)
        return len(tasks)


def _pick(candidates: list[tuple[Any, int]], busy: dict[int, int], *, room: int, cap: int) -> list[Any]:
    """The first ``room`` candidates, in queue order, skipping owners already at their cap."""
    picked: list[Any] = []
    for task_id, owner_id in candidates:
        if len(picked) >= room:
            break
        if cap and busy.get(owner_id, 0) >= cap:
            continue
        busy[owner_id] = busy.get(owner_id, 0) + 1
        picked.append(task_id)
    return picked


def send(queue_name: str, task_ids: list[str]) -> None:
    """Hand task ids to the broker (only ever after the QUEUED rows are committed)."""
    from jobs.tasks import run_task, run_tasks

    size = settings.CONVEYOR["DISPATCH_BATCH"].get(queue_name, 1)
    if size > 1 and len(task_ids) > 1:
        for start in range(0, len(task_ids), size):
            run_tasks.apply_async(args=[task_ids[start:start + size]], queue=queue_name)
        return
    for task_id in task_ids:
        run_task.apply_async(args=[task_id], queue=queue_name)


def dispatch_later(queue_name: str, delay_seconds: float) -> None:
    """Dispatch when a backoff ends. Best effort: the beat dispatch tick covers a lost message."""
    from queueing.tasks import dispatch_queue

    dispatch_queue.apply_async(args=[queue_name], countdown=max(0.0, delay_seconds) + 0.05, queue="default")
