"""Beat entry points. Ids in, services out."""
from __future__ import annotations

from celery import shared_task

from queueing import counters, dispatch, reconciler


@shared_task(name="queueing.dispatch_tick", ignore_result=True)
def dispatch_tick() -> int:
    """Safety net: dispatch every queue with waiting tasks."""
    return dispatch.dispatch()


@shared_task(name="queueing.dispatch_queue", ignore_result=True)
def dispatch_queue(queue_name: str) -> int:
    """Dispatch one queue (sent when a retry's backoff ends)."""
    return dispatch.dispatch([queue_name])


@shared_task(name="queueing.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """Re-send lost QUEUED tasks, re-run tasks of dead workers, dispatch."""
    return reconciler.reconcile()


@shared_task(name="queueing.fold_counters", ignore_result=True)
def fold_counters() -> dict[str, int]:
    """Move the statistics counter rows of ended database backends into stripe 0; forget the minutes
    no statistics window reaches."""
    return {"moved": counters.fold(), "forgotten": counters.forget_old()}


# The worker registry's signal handlers live with the worker-side code; importing them here makes
# every worker (which autodiscovers this module) register itself.
from queueing import heartbeat  # noqa: E402,F401
