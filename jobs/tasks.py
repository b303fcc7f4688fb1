"""Celery entry points: ids in, services out."""
from __future__ import annotations

from celery import shared_task
from django.db import transaction

from jobs import runner, services


@shared_task(name="jobs.run_task", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_task(self, task_id: str) -> None:  # type: ignore[no-untyped-def]
    """Claim (QUEUED → RUNNING, guarded), run the algorithm, finish. A losing duplicate does nothing."""
    task = services.claim(task_id=task_id, worker=self.request.hostname or "unknown")
    if task is None:
        return
    services.finish(task_id=task_id, outcome=runner.run(task))


@shared_task(name="jobs.run_tasks", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_tasks(self, task_ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Several short tasks in one message (``DISPATCH_BATCH``), each claimed, run and finished on its own
    as by run_task. One task's finish and the next one's claim share a commit; their queue is
    dispatched once at the end instead of after every task."""
    from queueing import dispatch

    worker = self.request.hostname or "unknown"
    queues: set[str] = set()
    ran: tuple[str, services.Outcome] | None = None
    for task_id in [*task_ids, None]:
        with transaction.atomic():  # a failure here rolls both back: the reaper re-runs the finished task
            if ran is not None:
                services.finish(task_id=ran[0], outcome=ran[1], dispatch_next=False)
            task = services.claim(task_id=task_id, worker=worker) if task_id is not None else None
        ran = None
        if task is not None:
            queues.add(task.queue_id)
            ran = (task_id, runner.run(task))
    if queues:
        dispatch.dispatch(sorted(queues))
