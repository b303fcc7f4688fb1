"""Celery entry points on the ``webhooks`` queue (``prune_log``: the default one): ids in, services out."""
from __future__ import annotations

from celery import shared_task

from webhooks import delivery, outbox, services


@shared_task(name="webhooks.deliver", acks_late=True, ignore_result=True)
def deliver(delivery_id: str) -> str | None:
    """One attempt of one delivery (claimed by a guarded UPDATE; a duplicate message does nothing)."""
    return delivery.attempt(delivery_id=delivery_id)


@shared_task(name="webhooks.send_due", ignore_result=True)
def send_due() -> int:
    """Beat: retries that are due and messages that look lost."""
    return delivery.send_due()


@shared_task(name="webhooks.fan_out", ignore_result=True)
def fan_out(delivery_ids: list[str]) -> None:
    """Split one state change's deliveries into one ``webhooks.deliver`` message each."""
    outbox.send_each(delivery_ids)


@shared_task(name="webhooks.prune_log", ignore_result=True)
def prune_log() -> int:
    """Beat: the delivery log's retention (``WEBHOOK_LOG_RETENTION_DAYS``)."""
    return services.prune_log()
