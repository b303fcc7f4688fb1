from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from config.bodies import NoUnknownKeys
from config.schema import NamedChoiceField
from webhooks.models import Delivery, DeliveryAttempt, Subscription
from webhooks.outbox import QUEUE_EVENTS, TASK_EVENTS, WILDCARDS


@extend_schema_field({"type": "string", "enum": sorted(TASK_EVENTS | QUEUE_EVENTS | WILDCARDS)})
class EventNameField(serializers.CharField):
    """An event to subscribe to (checked by ``webhooks.services``, which names the allowed ones)."""


@extend_schema_field({"type": "string", "format": "uri", "maxLength": 2000})
class WebhookUrlField(serializers.CharField):
    """An http(s) URL, checked by ``transport.validate_url`` (a 400 naming the field), not by DRF's
    ``URLField``, which refuses single-label hosts such as a Compose or Kubernetes service name
    (``http://receiver:8080/hook``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=2000, **kwargs)


class FutureDateTimeField(serializers.DateTimeField):
    """A moment while it is ahead; null once it has passed."""

    def to_representation(self, value: Any) -> Any:
        return super().to_representation(value) if value > timezone.now() else None


class WebhookIn(NoUnknownKeys):
    takes = "a webhook"

    url = WebhookUrlField()
    events = serializers.ListField(child=EventNameField(max_length=50), allow_empty=False, max_length=50)
    description = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    active = serializers.BooleanField(required=False, default=True)


class WebhookPatchIn(NoUnknownKeys):
    takes = "a webhook"

    url = WebhookUrlField(required=False)
    events = serializers.ListField(child=EventNameField(max_length=50), allow_empty=False, max_length=50,
                                   required=False)
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)
    active = serializers.BooleanField(required=False)


class WebhookOut(serializers.ModelSerializer):
    task = serializers.UUIDField(source="task_id", allow_null=True)
    # The old secret's grace period: null when there is none, or once it has ended (it no longer signs).
    secret_rotating_until = FutureDateTimeField(source="previous_secret_expires_at", allow_null=True)

    class Meta:
        model = Subscription
        fields = ["id", "url", "events", "description", "active", "task", "consecutive_failures", "failing_since",
                  "disabled_at", "disabled_reason", "secret_rotating_until", "created_at", "updated_at"]
        read_only_fields = fields  # an answer: every field is always there (required in the schema)


class WebhookWithSecretOut(WebhookOut):
    """Creation and rotation only: the one time the secret is shown."""

    class Meta(WebhookOut.Meta):
        fields = WebhookOut.Meta.fields + ["secret"]
        read_only_fields = fields


# The events a delivery can carry (a subscription's wildcards are expanded to these).
DELIVERED_EVENTS = sorted(TASK_EVENTS | QUEUE_EVENTS)


class DeliveryOut(serializers.ModelSerializer):
    webhook_id = serializers.CharField(read_only=True)
    webhook = serializers.UUIDField(source="subscription_id")
    event = NamedChoiceField(DELIVERED_EVENTS, enum_name="DeliveryEventEnum")

    class Meta:
        model = Delivery
        fields = ["id", "webhook_id", "webhook", "event", "task_id", "seq", "status", "attempts", "next_attempt_at",
                  "last_status_code", "last_error", "created_at", "finished_at"]
        read_only_fields = fields


class DeliveryAttemptOut(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["number", "outcome", "started_at", "finished_at", "duration_ms", "status_code", "response_headers",
                  "response_body", "error"]
        read_only_fields = fields


class DeliveryDetailOut(DeliveryOut):
    payload = serializers.JSONField()
    attempt_log = DeliveryAttemptOut(many=True)

    class Meta(DeliveryOut.Meta):
        fields = DeliveryOut.Meta.fields + ["payload", "attempt_log"]
        read_only_fields = fields
