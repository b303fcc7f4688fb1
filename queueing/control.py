"""Operator remote control of workers, through Celery's broadcast (``celery -A config control …``).

A 202 means the worker took the command: it is alive, and every action but ``shutdown`` (which gets
no reply) answered within ``REPLY_TIMEOUT`` without an error."""
from __future__ import annotations

from typing import Any

from rest_framework import status

from algorithms import registry
from config.celery import app
from config.errors import Conflict, ConveyorError, InvalidInput, refuse_nul
from queueing.errors import WorkerNotFound
from queueing.models import Queue, WorkerRecord
from queueing.selectors import live_workers

ACTIONS = ("shutdown", "pool_grow", "pool_shrink", "add_consumer", "cancel_consumer")
REPLY_TIMEOUT = 2.0
# Queues Celery itself routes to besides the Queue rows: the default one and webhook deliveries.
SYSTEM_QUEUES = {app.conf.task_default_queue, "webhooks"}


class WorkerNotAlive(Conflict):
    code = "worker_not_alive"


class WorkerRefused(Conflict):
    code = "worker_refused"


class WorkerNoReply(ConveyorError):
    status_code = status.HTTP_504_GATEWAY_TIMEOUT
    code = "worker_no_reply"


def control(*, hostname: str, action: str, queue: str | None = None, n: int = 1) -> list[dict[str, Any]]:
    """Send one control command to one live worker; returns its replies (none for ``shutdown``)."""
    if action not in ACTIONS:
        raise InvalidInput(f"action: one of {', '.join(ACTIONS)}", fields={"action": [f"one of {', '.join(ACTIONS)}"]})
    refuse_nul(hostname, field="hostname")  # from the URL path
    record = _alive(hostname)
    if action in ("add_consumer", "cancel_consumer") and not queue:
        raise InvalidInput("queue: required for this action", fields={"queue": ["required"]})
    if action == "add_consumer":
        _check_queue(queue)
    if action == "cancel_consumer" and queue not in record.queues:
        reason = f"worker {hostname!r} does not consume {queue!r} (it consumes {', '.join(record.queues) or 'nothing'})"
        raise InvalidInput(f"queue: {reason}", fields={"queue": [reason]})
    if action == "pool_shrink" and n >= record.concurrency:
        raise Conflict(f"pool_shrink by {n} would leave worker {hostname!r} no process (it has {record.concurrency}); "
                       "to stop it, use shutdown")
    dest = [hostname]
    ctl = app.control
    if action == "shutdown":
        # No reply: the worker stops taking tasks at once (warm shutdown); running tasks get
        # WORKER_SHUTDOWN_GRACE_SECONDS, as on SIGTERM, then are handed back (queueing.heartbeat).
        ctl.broadcast("conveyor_shutdown", destination=dest)
        return []
    if action == "pool_grow":
        replies = ctl.pool_grow(n=n, destination=dest, reply=True, timeout=REPLY_TIMEOUT)
    elif action == "pool_shrink":
        return _shrink(hostname, n)
    elif action == "add_consumer":
        replies = ctl.add_consumer(queue, destination=dest, reply=True, timeout=REPLY_TIMEOUT)
    else:
        replies = ctl.cancel_consumer(queue, destination=dest, reply=True, timeout=REPLY_TIMEOUT)
    return _checked(hostname, action, list(replies or []))


def _shrink(hostname: str, n: int) -> list[dict[str, Any]]:
    """One process at a time: Celery's ``pool_shrink(n)`` stops at the first busy process and reports an
    error after it has already removed some, so the answer says how many went."""
    replies: list[dict[str, Any]] = []
    for done in range(n):
        try:
            replies += _checked(hostname, "pool_shrink", list(app.control.pool_shrink(
                n=1, destination=[hostname], reply=True, timeout=REPLY_TIMEOUT) or []))
        except (WorkerRefused, WorkerNoReply) as error:
            if not done:
                raise
            raise type(error)(f"shrank worker {hostname!r} by {done} of {n}; then: {error.message}") from None
    return replies


def _alive(hostname: str) -> WorkerRecord:
    """The worker's registry row, when it is alive."""
    record = live_workers().filter(hostname=hostname, lost_at__isnull=True).first()
    if record is not None:
        return record
    if not WorkerRecord.objects.filter(hostname=hostname).exists():
        raise WorkerNotFound(f"worker {hostname!r} not found")
    raise WorkerNotAlive(f"worker {hostname!r} is not alive (stopped, lost or no recent heartbeat)")


def _check_queue(queue: str) -> None:
    """A typo would make the worker consume a queue nothing is routed to."""
    known = SYSTEM_QUEUES | {alg.queue for alg in registry.all_algorithms()}
    if queue not in known and not Queue.objects.filter(name=queue).exists():
        reason = f"unknown queue {queue!r}"
        raise InvalidInput(f"queue: {reason}", fields={"queue": [reason]})


def _checked(hostname: str, action: str, replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Celery's replies are ``[{hostname: {"ok": …} | {"error": …}}]``."""
    if not replies:
        raise WorkerNoReply(f"worker {hostname!r} did not answer {action} within {REPLY_TIMEOUT:g} s")
    errors = [answer["error"] for reply in replies for answer in reply.values()
              if isinstance(answer, dict) and "error" in answer]
    if errors:
        raise WorkerRefused(f"worker {hostname!r} refused {action}: {'; '.join(map(str, errors))}")
    return replies
