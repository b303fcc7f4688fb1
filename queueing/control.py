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
SHRINK_COMMAND = "conveyor_pool_shrink"  # queueing.heartbeat
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
    # pool_shrink's "would it leave no process?" is the worker's to answer (conveyor_pool_shrink), from its
    # live pool: the row is a heartbeat old, and two quick shrinks or a shrink right after a grow misread it.
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
        return _shrink(record, n)
    elif action == "add_consumer":
        replies = ctl.add_consumer(queue, destination=dest, reply=True, timeout=REPLY_TIMEOUT)
    else:
        replies = ctl.cancel_consumer(queue, destination=dest, reply=True, timeout=REPLY_TIMEOUT)
    return _checked(hostname, action, list(replies or []))


def _shrink(record: WorkerRecord, n: int) -> list[dict[str, Any]]:
    """One process at a time: Celery's ``pool_shrink(n)`` stops at the first busy process and reports an
    error after it has already removed some, so the answer says how many went.

    Each step is Conveyor's ``conveyor_pool_shrink`` (``queueing.heartbeat``), which the worker refuses
    when what is left of the request would leave it no process, judged by its live pool: a request that
    would is refused before its first step, and two requests at once cannot both pass. A worker of an
    earlier release (a rolling deploy) does not know the command and answers with the KeyError: it
    gets Celery's ``pool_shrink``, guarded by the registry row as before."""
    hostname = record.hostname
    replies: list[dict[str, Any]] = []
    for done in range(n):
        try:
            replies += _shrink_one(record, left=n - done, done=done)
        except (Conflict, WorkerNoReply) as error:
            if not done:
                raise
            raise type(error)(f"shrank worker {hostname!r} by {done} of {n}; then: {error.message}") from None
    return replies


def _shrink_one(record: WorkerRecord, *, left: int, done: int) -> list[dict[str, Any]]:
    """Remove one process of the ``left`` this request still has to remove."""
    hostname, dest = record.hostname, [record.hostname]
    replies = list(app.control.broadcast(SHRINK_COMMAND, arguments={"n": 1, "total": left}, destination=dest,
                                         reply=True, timeout=REPLY_TIMEOUT) or [])
    if _unknown_command(replies, SHRINK_COMMAND):  # an old worker: the row's count, less what went already
        if left >= record.concurrency - done:
            raise _no_process_left(hostname, left, record.concurrency - done)
        replies = list(app.control.pool_shrink(n=1, destination=dest, reply=True, timeout=REPLY_TIMEOUT) or [])
        return _checked(hostname, "pool_shrink", replies)
    for reply in replies:
        for answer in reply.values():
            if isinstance(answer, dict) and answer.get("would_leave_none"):
                raise _no_process_left(hostname, left, answer.get("processes"))
    return _checked(hostname, "pool_shrink", replies)


def _no_process_left(hostname: str, n: int, processes: Any) -> Conflict:
    return Conflict(f"pool_shrink by {n} would leave worker {hostname!r} no process (it has {processes}); "
                    "to stop it, use shutdown")


def _unknown_command(replies: list[dict[str, Any]], command: str) -> bool:
    """Whether the worker answered that it has no such control command (kombu replies with the KeyError)."""
    errors = [answer.get("error") for reply in replies for answer in reply.values() if isinstance(answer, dict)]
    return bool(errors) and all(isinstance(e, str) and e.startswith("KeyError(") and command in e for e in errors)


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
