"""Log context in Celery workers: ``task_id`` (the Conveyor task a ``jobs.run_task`` runs) and the
``request_id`` of the HTTP request that submitted it, on every line and every event the run records."""
from __future__ import annotations

from typing import Any

import structlog
from celery import signals

RUN_TASK = "jobs.run_task"


def bind(sender: Any = None, args: Any = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    if getattr(sender, "name", None) == RUN_TASK and args:
        structlog.contextvars.bind_contextvars(task_id=str(args[0]), request_id=None)


def bind_task(task_id: Any, request_id: str) -> None:
    """The task a worker runs now, and the request that submitted it (``Task.request_id``, read with the
    claim): bound once the task is claimed, and per task in a multi-id message."""
    structlog.contextvars.bind_contextvars(task_id=str(task_id), request_id=request_id or None)


def unbind(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


def connect() -> None:
    signals.task_prerun.connect(bind, weak=False, dispatch_uid="conveyor-log-bind")
    signals.task_postrun.connect(unbind, weak=False, dispatch_uid="conveyor-log-unbind")
