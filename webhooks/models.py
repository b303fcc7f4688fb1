"""Subscriptions, the delivery outbox and its attempt log (saleor's EventDelivery/EventDeliveryAttempt).

A ``Delivery`` row is written in the same transaction as the ``TaskEvent`` it carries, so a rolled-back
state change never notifies anyone; its ``id`` is the ``webhook-id`` header, stable across retries.
Every HTTP attempt is a ``DeliveryAttempt`` row, written *before* the request and completed after it,
so a worker killed mid-send leaves a visible, retryable attempt.
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q


class Subscription(models.Model):
    """An endpoint that wants some events: all of its owner's tasks, or one task (``webhook_url`` at submit)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks")
    # http(s) URL, checked by webhooks.transport.validate_url (API and admin), not Django's URLValidator,
    # which refuses single-label hosts such as a Compose or Kubernetes service name
    url = models.CharField(max_length=2000)
    events = ArrayField(models.CharField(max_length=50))
    description = models.CharField(max_length=500, blank=True)
    active = models.BooleanField(default=True)
    # Set for the per-task shortcut: only this task's events, deleted with the task.
    task = models.ForeignKey("jobs.Task", null=True, blank=True, on_delete=models.CASCADE,
                             related_name="webhook_subscriptions")
    # The signing key is needed in clear to compute HMACs; it is shown to the owner only on creation/rotation.
    secret = models.CharField(max_length=100)
    # The keys a rotation replaced that still sign during its grace period, newest first, space-separated
    # (a second rotation within the grace keeps the earlier ones: a receiver that never saw the key in
    # between, its response lost, still verifies); at most MAX_PREVIOUS_SECRETS.
    previous_secret = models.CharField(max_length=500, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)

    consecutive_failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=500, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner"], name="webhook_sub_owner_active_idx", condition=Q(active=True)),
            models.Index(fields=["task"], name="webhook_sub_task_idx", condition=Q(task__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.url} ({', '.join(self.events)})"


class DeliveryStatus(models.TextChoices):
    PENDING = "PENDING"      # waiting for its first attempt or a retry
    SUCCEEDED = "SUCCEEDED"  # the receiver answered 2xx
    FAILED = "FAILED"        # permanent error, attempts exhausted, or the endpoint was disabled


class Delivery(models.Model):
    """One event for one subscription: the outbox row and the delivery's current state."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=50)
    payload = models.JSONField()
    # Per-task order: a task's later event waits while an earlier one to the same endpoint is PENDING.
    task_id = models.UUIDField(null=True, blank=True)
    # Per-queue order, the same way, for queue events (``queue.paused``/``queue.resumed``): their queue,
    # and a ``seq`` from the ``webhooks_queue_event_seq`` sequence. Empty for task events.
    queue = models.CharField(max_length=64, blank=True, default="", db_default="")
    seq = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # ``attempts`` when it was last redelivered: a redelivery's retry budget (MAX_ATTEMPTS, the schedule)
    # counts from there, whatever its history.
    redelivered_after = models.PositiveIntegerField(default=0, db_default=0)
    next_attempt_at = models.DateTimeField()
    # When a Celery message was last sent for it; the beat re-sends only what looks lost.
    sent_at = models.DateTimeField(null=True, blank=True)
    # An attempt holds the row until then (connect + read timeouts and a margin).
    in_flight_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["next_attempt_at"], name="webhook_delivery_due_idx",
                         condition=Q(status="PENDING")),
            models.Index(fields=["subscription", "task_id", "seq"], name="webhook_delivery_order_idx",
                         condition=Q(status="PENDING")),
            models.Index(fields=["subscription", "-created_at"], name="webhook_delivery_log_idx"),
            # The log's retention (services.prune_log): finished deliveries, oldest first.
            models.Index(fields=["finished_at"], name="webhook_delivery_finished_idx",
                         condition=Q(status__in=["SUCCEEDED", "FAILED"])),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.subscription_id} {self.status}"

    @property
    def webhook_id(self) -> str:
        return f"msg_{self.id.hex}"


class DeliveryAttempt(models.Model):
    """One HTTP request: written before it is sent, completed with the response (or the error)."""

    class Outcome(models.TextChoices):
        IN_FLIGHT = "IN_FLIGHT"
        SUCCEEDED = "SUCCEEDED"
        RETRY = "RETRY"        # failed, another attempt is scheduled
        FAILED = "FAILED"      # failed, no further attempt
        LOST = "LOST"          # the worker died mid-send; found by the next attempt

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.IN_FLIGHT)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.TextField(blank=True)
    error = models.CharField(max_length=1000, blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_number_uniq")]

    def __str__(self) -> str:
        return f"{self.delivery_id} #{self.number} {self.outcome}"
