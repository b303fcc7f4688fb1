"""Recovers what the broker or a dead worker lost; PostgreSQL says what should be happening.

* QUEUED too long without a claim (the broker lost the message: Redis restarted, FLUSHDB) → re-sent.
  A duplicate is harmless: the guarded claim lets one message run the task, the other is dropped.
* RUNNING with a stale heartbeat (its worker was killed) → back to PENDING while attempts remain,
  otherwise FAILED.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs import transitions
from jobs.models import Status, Task
from queueing import dispatch

log = logging.getLogger(__name__)


def resend_lost_queued() -> int:
    """Re-send QUEUED tasks no worker claimed within ``TASK_QUEUED_RESEND_SECONDS``."""
    cutoff = timezone.now() - timedelta(seconds=settings.CONVEYOR["QUEUED_RESEND_SECONDS"])
    with transaction.atomic():
        rows = list(
            Task.objects.filter(status=Status.QUEUED, queued_at__lt=cutoff)
            .select_for_update(skip_locked=True).values_list("id", "queue")[:1000]
        )
        if not rows:
            return 0
        Task.objects.filter(id__in=[r[0] for r in rows], status=Status.QUEUED).update(queued_at=timezone.now())
        by_queue: dict[str, list[str]] = {}
        for task_id, queue in rows:
            by_queue.setdefault(queue, []).append(str(task_id))
        transaction.on_commit(lambda: [dispatch.send(q, ids) for q, ids in by_queue.items()])
    log.warning("re-sent %d QUEUED tasks that no worker claimed", len(rows))
    return len(rows)


def reap_stale_running() -> int:
    """RUNNING tasks whose heartbeat stopped: re-run while attempts remain, else FAILED."""
    cutoff = timezone.now() - timedelta(seconds=settings.CONVEYOR["HEARTBEAT_STALE_SECONDS"])
    stale = list(Task.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff)
                 .values_list("id", "attempts", "max_retries")[:1000])
    retry = [tid for tid, attempts, max_retries in stale if attempts <= max_retries]
    fail = [tid for tid, attempts, max_retries in stale if attempts > max_retries]
    with transaction.atomic():
        # Heartbeat guard repeated in SQL: a worker that came back to life in between keeps its task.
        guard = {"where_sql": "heartbeat_at < %s", "where_params": [cutoff]}
        rerun = transitions.apply(retry, frm=[Status.RUNNING], to=Status.PENDING, event="task.retrying",
                                  values={"queued_at": None, "error": "worker lost (heartbeat stale)"},
                                  **guard, data={"reason": "worker lost"})
        failed = transitions.apply(fail, frm=[Status.RUNNING], to=Status.FAILED, event="task.failed",
                                   values={"finished_at": timezone.now(), "error": "worker lost (heartbeat stale); no retries left"},
                                   **guard, data={"error": "worker lost"})
        queues = {t.queue_id for t in rerun + failed}
        if queues:
            transaction.on_commit(lambda: dispatch.dispatch(sorted(queues)))
    if stale:
        log.warning("reaped %d stale RUNNING tasks (%d re-run, %d failed)", len(stale), len(rerun), len(failed))
    return len(rerun) + len(failed)


def reconcile() -> dict[str, int]:
    """One pass of every recovery step, then the dispatcher's safety tick."""
    return {
        "resent": resend_lost_queued(),
        "reaped": reap_stale_running(),
        "dispatched": dispatch.dispatch(),
    }
