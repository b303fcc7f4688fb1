"""Celery entry points: ids in, services out."""
from __future__ import annotations

from celery import shared_task

from jobs import runner, services
from observability.worker import bind_task


@shared_task(name="jobs.run_task", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_task(self, task_id: str) -> None:  # type: ignore[no-untyped-def]
    """Claim (QUEUED → RUNNING, guarded), run the algorithm, finish. A losing duplicate does nothing."""
    task = services.claim(task_id=task_id, worker=self.request.hostname or "unknown")
    if task is None:
        return
    bind_task(task.id, task.request_id)
    services.finish(task_id=task_id, outcome=runner.run(task), claimed_at=task.started_at)


@shared_task(name="jobs.run_tasks", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_tasks(self, task_ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Several short tasks in one message (``DISPATCH_BATCH``): claimed in one statement, run one after
    another, finished together (``runner.Batch``); their queue is dispatched once at the end."""
    from queueing import dispatch

    worker = self.request.hostname or "unknown"
    tasks = services.claim_many(task_ids=task_ids, worker=worker)
    with runner.Batch(tasks, worker) as batch:
        for task in tasks:
            bind_task(task.id, task.request_id)
            batch.run(task)
    if tasks:
        dispatch.dispatch(sorted({t.queue_id for t in tasks}))
