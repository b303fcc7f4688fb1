"""Task retention (``TASK_RETENTION_DAYS``): final tasks finished longer ago are deleted, with their
events, results and artifacts (the files too), their per-task webhook subscription and its delivery log.

Beat runs ``prune`` every ``TASK_PRUNE_EVERY_SECONDS``; ``manage.py prune_tasks`` runs it by hand. It
walks the final tasks oldest first, ``PRUNE_BATCH`` at a time, and deletes each batch in a transaction of
its own, locking its tasks with ``SKIP LOCKED`` (a task someone holds is left for the next run); it stops
starting batches after ``PRUNE_SECONDS``, so a first run over a large backlog takes a bounded slice of
it. The walk reads the statistics' index on ``finished_at`` (``task_finished_cover_idx``) one range at a
time: no index of its own for every finish to write, and a batch costs the same however large the
backlog (measured at 1M tasks, 3M events: ~0.2 s for 1,000 tasks).

Kept past the cutoff: a task one of whose webhook deliveries still waits or retries (until it
ends), and one whose remote task the orphan canceller has not cancelled yet
(algorithms/remote/orphans.py). The retention is never shorter than the longest statistics window, so
the statistics, whose per-minute counters lose a task when its row goes, never count a deleted task
anyway; nor shorter than ``RESULT_TTL_DAYS`` (jobs/checks.py refuses such a setting, ``prune`` keeps to
the floor in a process that did not run the checks).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from jobs.models import FINAL, Task

log = logging.getLogger(__name__)

PRUNE_BATCH = 1_000
PRUNE_SECONDS = 60.0
_COUNTED = ("tasks", "events", "artifacts", "files", "kept", "batches")


def _counts(**given: int) -> dict[str, int]:
    """What a prune (or a part of one) counts: ``given``, the rest 0."""
    return {key: given.get(key, 0) for key in _COUNTED}


def floor_days() -> float:
    """The shortest retention allowed: the longest statistics window, and ``RESULT_TTL_DAYS``."""
    from queueing.statistics import MAX_WINDOW

    return max(MAX_WINDOW / timedelta(days=1), settings.CONVEYOR["RESULT_TTL_DAYS"])


def prunable(cutoff: datetime) -> QuerySet[Task]:
    """Final tasks finished before ``cutoff`` that nothing still needs."""
    from algorithms.remote.models import RemoteRun
    from webhooks.models import Delivery, DeliveryStatus

    waiting = Delivery.objects.filter(task_id=OuterRef("id"), status=DeliveryStatus.PENDING)
    return (Task.objects.filter(status__in=FINAL, finished_at__lt=cutoff)
            .exclude(Exists(waiting)).exclude(Exists(RemoteRun.objects.filter(task_id=OuterRef("id")))))


def prune(*, days: float | None = None, dry_run: bool = False, batch: int = PRUNE_BATCH,
          seconds: float | None = PRUNE_SECONDS, now: datetime | None = None) -> dict[str, Any]:
    """Delete the final tasks finished more than ``days`` (default ``TASK_RETENTION_DAYS``; 0 there:
    none) ago. At least one batch runs; more while ``seconds`` (None: no limit) have not passed.

    Returns the counts of what was deleted (``tasks``, ``events``, ``artifacts``, ``files``, ``batches``),
    of the tasks ``kept`` because deleting them failed (logged; tried again at the next run), and
    ``cutoff``; a dry run deletes nothing and counts the tasks that would go."""
    if days is None:
        days = settings.CONVEYOR["TASK_RETENTION_DAYS"]
        if days <= 0:
            return {**_counts(), "cutoff": None}
    if days < (floor := floor_days()):
        log.warning("task retention of %g days is shorter than the statistics window or RESULT_TTL_DAYS; "
                    "keeping tasks %g days", days, floor)
        days = floor
    now = now or timezone.now()
    cutoff = now - timedelta(days=days)
    if dry_run:
        return {**_counts(tasks=prunable(cutoff).count()), "cutoff": cutoff}
    counts = _counts()
    deadline = None if seconds is None else time.monotonic() + seconds
    after: tuple[datetime, Any] | None = None
    while True:
        window = _next_window(cutoff, after, batch)
        if window:
            for key, n in _prune_batch(cutoff, [task_id for _, task_id in window], now).items():
                counts[key] += n
            counts["batches"] += 1
            after = window[-1]
        if len(window) < batch or (deadline is not None and time.monotonic() >= deadline):
            break
    if counts["tasks"] or counts["kept"]:
        log.info("pruned %d tasks finished before %s (%d events, %d artifacts, %d files; %d kept: their deletion "
                 "failed)", counts["tasks"], cutoff.isoformat(), counts["events"], counts["artifacts"],
                 counts["files"], counts["kept"],
                 extra={"retention_days": days, **counts})
    return {**counts, "cutoff": cutoff}


def _next_window(cutoff: datetime, after: tuple[datetime, Any] | None, batch: int) -> list[tuple[datetime, Any]]:
    """The next ``batch`` final tasks finished before ``cutoff``, oldest first, after ``after`` (a
    ``(finished_at, id)``): one range of the ``finished_at`` index, however many tasks wait behind
    them, and however many at the front are kept (a waiting delivery) or locked, which the walk passes."""
    window = Task.objects.filter(status__in=FINAL, finished_at__lt=cutoff)
    if after is not None:
        window = window.filter(finished_at__gte=after[0]).exclude(finished_at=after[0], id__lte=after[1])
    return list(window.order_by("finished_at", "id").values_list("finished_at", "id")[:batch])


def _prune_batch(cutoff: datetime, window: list[Any], now: datetime) -> dict[str, int]:
    """``window``'s tasks in one transaction; if that fails (a file the storage would not delete), each
    task in a transaction of its own, and those that fail again are logged and left for the next run,
    so that one file that cannot go never stops the retention of every task behind it."""
    try:
        return _prune_tasks(cutoff, window, now)
    except Exception:
        log.warning("a batch of task retention failed; deleting its tasks one by one", exc_info=True)
    counts = _counts()
    for task_id in window:
        try:
            done = _prune_tasks(cutoff, [task_id], now)
        except Exception:
            log.exception("task retention could not delete task %s; kept for the next run", task_id)
            counts["kept"] += 1
            continue
        for key, n in done.items():
            counts[key] += n
    return counts


def _prune_tasks(cutoff: datetime, window: list[Any], now: datetime) -> dict[str, int]:
    """One transaction: lock those of ``window``'s tasks that may go and nobody holds, delete their
    files, then them (Django's cascade: events, artifacts, per-task subscriptions and their deliveries;
    a retry of one loses its ``retry_of``)."""
    from algorithms import results
    from algorithms.models import Artifact
    from jobs.models import TaskEvent

    with transaction.atomic():
        ids = list(prunable(cutoff).filter(id__in=window).order_by().select_for_update(skip_locked=True)
                   .values_list("id", flat=True))
        if not ids:
            return _counts()
        files = results.expire_files_of(ids, now=now)
        _, deleted = Task.objects.filter(id__in=ids).only("id").delete()
    return _counts(tasks=deleted.get(Task._meta.label, 0), events=deleted.get(TaskEvent._meta.label, 0),
                   artifacts=deleted.get(Artifact._meta.label, 0), files=files)
