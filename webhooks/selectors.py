"""Reads for the API: a user sees only their own endpoints and deliveries (others' are 404)."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from config.errors import NotFound
from webhooks.models import Delivery, Subscription


def subscriptions_for(user: Any) -> QuerySet[Subscription]:
    return Subscription.objects.filter(owner=user)


def subscription_for(user: Any, subscription_id: Any) -> Subscription:
    try:
        return subscriptions_for(user).get(id=subscription_id)
    except (Subscription.DoesNotExist, ValidationError, ValueError):
        raise NotFound("webhook not found") from None


def deliveries_of(subscription: Subscription) -> QuerySet[Delivery]:
    return Delivery.objects.filter(subscription=subscription)


def delivery_of(subscription: Subscription, delivery_id: Any) -> Delivery:
    """By its id, or by its ``webhook-id`` (``msg_`` and the id's 32 hex digits)."""
    delivery_id = str(delivery_id).removeprefix("msg_")
    try:
        return deliveries_of(subscription).prefetch_related("attempt_log").get(id=delivery_id)
    except (Delivery.DoesNotExist, ValidationError, ValueError):
        raise NotFound("delivery not found") from None


def task_webhooks(task_ids: list[Any]) -> dict[Any, dict[str, str]]:
    """The per-task shortcut subscriptions of just-created tasks, with their secrets (shown once, at submit)."""
    rows = Subscription.objects.filter(task_id__in=task_ids).values_list("task_id", "id", "url", "secret")
    return {task_id: {"id": str(sub_id), "url": url, "secret": secret} for task_id, sub_id, url, secret in rows}
