"""Log context in Celery workers: ``task_id`` (the Conveyor task a ``jobs.run_task`` runs) and the
``request_id`` of the HTTP request that submitted it, on every line and every event the run records."""
from __future__ import annotations

from typing import Any

import structlog
from celery import signals

RUN_TASK = "jobs.run_task"


def _submitted_by_request(task_id: str) -> str | None:
    from jobs.models import TaskEvent

    # task.created is always seq 1 (jobs.services inserts it with the row): one unique-index lookup.
    return (TaskEvent.objects.filter(task_id=task_id, seq=1)
            .values_list("data__request_id", flat=True).first())


def bind(sender: Any = None, args: Any = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    if getattr(sender, "name", None) == RUN_TASK and args:
        task_id = str(args[0])
        try:
            request_id = _submitted_by_request(task_id)
        except Exception:  # context for logs must never stop a task from running
            request_id = None
        structlog.contextvars.bind_contextvars(task_id=task_id, request_id=request_id)


def unbind(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


def connect() -> None:
    signals.task_prerun.connect(bind, weak=False, dispatch_uid="conveyor-log-bind")
    signals.task_postrun.connect(unbind, weak=False, dispatch_uid="conveyor-log-unbind")
