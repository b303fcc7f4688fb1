"""Operator remote control of workers, through Celery's broadcast (``celery -A config control …``)."""
from __future__ import annotations

from typing import Any

from config.celery import app
from config.errors import InvalidInput, refuse_nul
from queueing.errors import WorkerNotFound
from queueing.models import WorkerRecord

ACTIONS = ("shutdown", "pool_grow", "pool_shrink", "add_consumer", "cancel_consumer")
REPLY_TIMEOUT = 2.0


def control(*, hostname: str, action: str, queue: str | None = None, n: int = 1) -> list[dict[str, Any]]:
    """Send one control command to one worker; returns its replies (empty when it did not answer)."""
    if action not in ACTIONS:
        raise InvalidInput(f"action: one of {', '.join(ACTIONS)}", fields={"action": [f"one of {', '.join(ACTIONS)}"]})
    refuse_nul(hostname, field="hostname")  # from the URL path
    if not WorkerRecord.objects.filter(hostname=hostname).exists():
        raise WorkerNotFound(f"worker {hostname!r} not found")
    if action in ("add_consumer", "cancel_consumer") and not queue:
        raise InvalidInput("queue: required for this action", fields={"queue": ["required"]})
    dest = [hostname]
    ctl = app.control
    if action == "shutdown":
        # No reply: the worker stops right away (warm shutdown, running tasks finish first).
        ctl.shutdown(destination=dest)
        return []
    if action == "pool_grow":
        replies = ctl.pool_grow(n=n, destination=dest, reply=True, timeout=REPLY_TIMEOUT)
    elif action == "pool_shrink":
        replies = ctl.pool_shrink(n=n, destination=dest, reply=True, timeout=REPLY_TIMEOUT)
    elif action == "add_consumer":
        replies = ctl.add_consumer(queue, destination=dest, reply=True, timeout=REPLY_TIMEOUT)
    else:
        replies = ctl.cancel_consumer(queue, destination=dest, reply=True, timeout=REPLY_TIMEOUT)
    return list(replies or [])
