"""Celery entry points: ids in, services out."""
from __future__ import annotations

from celery import shared_task

from jobs import runner, services


@shared_task(name="jobs.run_task", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_task(self, task_id: str) -> None:  # type: ignore[no-untyped-def]
    """Claim (QUEUED → RUNNING, guarded), run the algorithm, finish. A losing duplicate does nothing."""
    task = services.claim(task_id=task_id, worker=self.request.hostname or "unknown")
    if task is None:
        return
    services.finish(task_id=task_id, outcome=runner.run(task))
