"""Queue events (``queue.paused``, ``queue.resumed``): the single place they go through.

``record_queue_event()`` is called inside the transaction that changed the queue. It registers the
fan-out on commit, so a rolled-back pause notifies nobody: the channel layer group ``queues.all``
(operators' dashboards join it; jobs/consumers.py handles ``queue.event``). Webhook deliveries for
queue events hook in here too.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, TypedDict

from django.db import transaction
from django.utils import timezone

from jobs.events import iso, publisher
from queueing.models import Queue

log = logging.getLogger(__name__)

QUEUES_GROUP = "queues.all"
WORKERS_GROUP = "workers.all"
QUEUE_EVENTS = ("queue.paused", "queue.resumed")
WORKER_EVENTS = ("worker.online", "worker.offline", "worker.lost")


class QueueEventPayload(TypedDict):
    event: str
    queue: str
    paused: bool
    data: dict[str, Any]
    timestamp: str


def record_queue_event(*, queue: Queue, event: str, data: dict[str, Any] | None = None) -> QueueEventPayload:
    """Build the wire payload of a queue event and publish it after commit."""
    assert event in QUEUE_EVENTS, event
    body: QueueEventPayload = {
        "event": event, "queue": queue.name, "paused": queue.paused, "data": dict(data or {}),
        "timestamp": iso(timezone.now()),
    }
    transaction.on_commit(lambda: _publish(body), robust=True)
    from webhooks import outbox  # operators' queue.* webhooks: outbox rows in this transaction, sent on commit

    outbox.enqueue_queue_event(event, body)
    return body


def _publish(body: QueueEventPayload) -> None:
    try:
        fut = asyncio.run_coroutine_threadsafe(_send(body), publisher._ensure_loop())
        fut.add_done_callback(_log_failure)
    except Exception:  # best effort: the queue row itself is the truth
        log.exception("could not publish %s", body["event"])


async def _send(body: QueueEventPayload) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    await layer.group_send(QUEUES_GROUP, {"type": "queue.event", "payload": body})


def _log_failure(fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("publishing a queue event failed: %s", fut.exception())


def publish_worker_event(*, hostname: str, event: str, data: dict[str, Any] | None = None) -> None:
    """``worker.online`` / ``worker.offline`` / ``worker.lost`` to the ``workers.all`` group (dashboards)."""
    assert event in WORKER_EVENTS, event
    body = {"event": event, "worker": hostname, "data": dict(data or {}), "timestamp": iso(timezone.now())}

    async def send() -> None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(WORKERS_GROUP, {"type": "worker.event", "payload": body})

    try:
        asyncio.run_coroutine_threadsafe(send(), publisher._ensure_loop()).add_done_callback(_log_failure)
    except Exception:
        log.exception("could not publish %s", event)
