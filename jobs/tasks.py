"""Celery entry points: ids in, services out."""
from __future__ import annotations

import time
from importlib import import_module

from celery import shared_task
from django.conf import settings

from jobs import execution, retention, runner
from observability.worker import bind_task


@shared_task(name="jobs.run_task", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_task(self, task_id: str) -> None:  # type: ignore[no-untyped-def]
    """Claim (QUEUED → RUNNING, guarded), run the algorithm, finish. A losing duplicate does nothing.

    Run as a batch of one (``runner.Batch``): its heartbeat goes on until its outcome is recorded, and a
    record that fails in a database blip is tried again, as for a batch's tasks."""
    worker = self.request.hostname or "unknown"
    since = time.monotonic()
    task = execution.claim(task_id=task_id, worker=worker)
    if task is None:
        return
    bind_task(task.id, task.request_id)
    with runner.Batch([task], worker, dispatch_next=True, since=since) as batch:
        batch.run(task)


@shared_task(name="jobs.run_tasks", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_tasks(self, task_ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Several short tasks in one message (``DISPATCH_BATCH``): claimed in one statement, run one after
    another, finished together (``runner.Batch``); their queue is dispatched once at the end."""
    from queueing import dispatch

    worker = self.request.hostname or "unknown"
    since = time.monotonic()
    tasks = execution.claim_many(task_ids=task_ids, worker=worker)
    with runner.Batch(tasks, worker, since=since) as batch:
        for task in tasks:
            bind_task(task.id, task.request_id)
            batch.run(task)
    if tasks:
        dispatch.dispatch(sorted({t.queue_id for t in tasks}))


@shared_task(name="jobs.prune_tasks", ignore_result=True)
def prune_tasks() -> dict[str, int]:
    """Beat: task retention (``TASK_RETENTION_DAYS``, jobs/retention.py), a bounded slice per run; and the
    expired admin sessions, as ``manage.py clearsessions`` would (else ``django_session`` only grows)."""
    counts = retention.prune()
    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()
    return {k: v for k, v in counts.items() if k != "cutoff"}
