"""A task whose remote service is down waits in its queue, not in a worker slot, and not as a failure."""
from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from jobs.models import Status, Task

HOLD_REASON = "remote service unavailable"
MIN_DELAY = 1.0


@transaction.atomic
def hold_for_service(*, task_id: UUID | str, service: str, error: str, delay: float, claimed_at: Any) -> str | None:
    """RUNNING → PENDING (``task.requeued``; the attempt is not counted, ``not_before`` = now + delay),
    or RUNNING → TIMED_OUT once the task has waited past its ``timeout_seconds`` since it was created;
    RUNNING → CANCELLED instead of either when its cancel was requested meanwhile (the next claim
    would clear the flag: ``execution.back_to_pending``). ``claimed_at``: the ``started_at`` of the claim
    the caller runs the task under; a run taken for dead and started again elsewhere changes nothing.

    Returns the new status, or None when the row was no longer RUNNING (under that claim). The
    delay is at least a second, so the worker that holds the task has long returned before any
    dispatcher may hand it to another worker.
    """
    from jobs import execution
    from queueing import dispatch

    task = Task.objects.only("created_at", "timeout_seconds", "queue").get(id=task_id)
    now = timezone.now()
    delay = max(MIN_DELAY, delay)
    guard = execution.claim_guard(claimed_at)
    if (now - task.created_at).total_seconds() + delay > task.timeout_seconds:
        why = f"remote service {service} unavailable for longer than the task's timeout ({error})"
        moved = execution.give_up([task_id], error=why, data={"error": why}, status=Status.TIMED_OUT, **guard)
    else:
        moved = execution.back_to_pending(
            [task_id], event="task.requeued", values={"not_before": now + timedelta(seconds=delay), "queued_at": None},
            sql_values={"attempts": "GREATEST(attempts - 1, 0)"}, **guard,
            data={"reason": HOLD_REASON, "service": service, "error": error, "retry_in_seconds": round(delay, 3)})
    done = next(iter(moved), None)
    if done is None:
        return None
    queue = done.queue_id
    transaction.on_commit(lambda: dispatch.dispatch([queue]), robust=True)  # the slot it held is free
    if done.status == Status.PENDING:
        transaction.on_commit(lambda: dispatch.dispatch_later(queue, delay), robust=True)
    return done.status


def holds_so_far(task_id: UUID | str) -> int:
    from jobs.models import TaskEvent

    return TaskEvent.objects.filter(task_id=task_id, event="task.requeued", data__reason=HOLD_REASON).count()
