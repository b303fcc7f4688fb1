"""The dispatcher: moves PENDING tasks to QUEUED and hands their ids to the broker.

Per queue, best priority first (then submit order), only up to the queue's concurrency window
(QUEUED + RUNNING ≤ concurrency), never for a paused queue. The queue row's lock serialises
dispatchers of one queue so two of them cannot both fill the same free slots; ``SKIP LOCKED`` on the
task rows steps around rows that a cancel or priority change holds at that moment.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from jobs import transitions
from jobs.models import Status, Task
from queueing.models import Queue

log = logging.getLogger(__name__)


def dispatch(queue_names: Iterable[str] | None = None) -> int:
    """Dispatch every named queue (all queues with waiting tasks when None). Returns tasks queued."""
    if queue_names is None:
        queue_names = (
            Task.objects.filter(status=Status.PENDING).values_list("queue", flat=True).distinct().order_by()
        )
    return sum(_dispatch_queue(name) for name in list(queue_names))


def _dispatch_queue(name: str) -> int:
    with transaction.atomic():
        queue = Queue.objects.select_for_update().filter(name=name).first()
        if queue is None or queue.paused:
            return 0
        in_flight = Task.objects.filter(queue=name, status__in=[Status.QUEUED, Status.RUNNING]).count()
        room = queue.concurrency - in_flight
        if room <= 0:
            return 0
        now = timezone.now()
        ids = list(
            Task.objects.filter(queue=name, status=Status.PENDING)
            .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
            .order_by("-priority", "created_at", "id")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:room]
        )
        tasks = transitions.apply(ids, frm=[Status.PENDING], to=Status.QUEUED, event="task.queued",
                                  values={"queued_at": now, "not_before": None})
        if tasks:
            sent = [str(t.id) for t in tasks]
            transaction.on_commit(lambda: send(name, sent))
        return len(tasks)


def send(queue_name: str, task_ids: list[str]) -> None:
    """Hand task ids to the broker (only ever after the QUEUED rows are committed)."""
    from jobs.tasks import run_task

    for task_id in task_ids:
        run_task.apply_async(args=[task_id], queue=queue_name)


def dispatch_later(queue_name: str, delay_seconds: float) -> None:
    """Dispatch when a backoff ends. Best effort: the beat dispatch tick covers a lost message."""
    from queueing.tasks import dispatch_queue

    dispatch_queue.apply_async(args=[queue_name], countdown=max(0.0, delay_seconds) + 0.05, queue="default")
