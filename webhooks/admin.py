from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages

from config.admin_input import CheckedSelection
from webhooks import services, signing
from webhooks.models import Delivery, DeliveryAttempt, Subscription


class SubscriptionForm(forms.ModelForm):
    """The URL checked as the API checks it (``transport.validate_url``: single-label hosts such as a
    service name allowed, the address guard applied), not by Django's URL field."""

    class Meta:
        model = Subscription
        fields = "__all__"

    def clean_url(self) -> str:
        from config.errors import InvalidInput
        from webhooks.transport import validate_url

        try:
            return validate_url(self.cleaned_data["url"])
        except InvalidInput as exc:
            raise forms.ValidationError((exc.fields or {}).get("url") or [exc.message]) from None

    def clean_events(self) -> list[str]:
        """The events checked as the API checks them: its serializer's field (at most 50), then
        ``services.clean_events`` (known names or ``task.*``/``queue.*``, queue events for an operator owner).
        Before, ``task.succeded,"task.*"`` was saved as typed and the endpoint silently never matched."""
        from rest_framework import serializers

        from config.errors import ConveyorError
        from webhooks.api.serializers import WebhookIn

        events = self.cleaned_data["events"]
        owner = self.cleaned_data.get("owner")  # checked before events (field order); none: that field's error
        if owner is None:
            return events
        try:
            return services.clean_events(WebhookIn().fields["events"].run_validation(events), owner=owner)
        except serializers.ValidationError as exc:
            raise forms.ValidationError(_messages(exc.detail)) from None
        except ConveyorError as exc:  # the API's 400 (unknown names) or 403 (queue events) reason
            raise forms.ValidationError((exc.fields or {}).get("events") or [exc.message]) from None


def _messages(detail: Any) -> list[str]:
    """A DRF error's texts, flat (a list field's are per item)."""
    if isinstance(detail, dict):
        return [text for value in detail.values() for text in _messages(value)]
    if isinstance(detail, list):
        return [text for value in detail for text in _messages(value)]
    return [str(detail)]


@admin.register(Subscription)
class SubscriptionAdmin(CheckedSelection, admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ["url", "owner", "events", "active", "task", "consecutive_failures", "disabled_at", "created_at"]
    list_filter = ["active"]
    search_fields = ["url", "owner__username", "description"]
    raw_id_fields = ["owner", "task"]
    # The signing keys are never shown here (anyone who can view the page could sign as Conveyor); their owner
    # sees them at creation and rotation.
    exclude = ["secret", "previous_secret"]
    readonly_fields = ["previous_secret_expires_at", "consecutive_failures",
                       "failing_since", "disabled_at", "disabled_reason", "created_at", "updated_at"]

    def save_model(self, request: Any, obj: Subscription, form: Any, change: bool) -> None:
        if not change:  # a new endpoint gets its key here, shown once, as the API shows it
            obj.secret = signing.new_secret()
            messages.warning(request, f"webhook {obj.url}: signing secret {obj.secret} — copy it now, it is not "
                                      "shown again.")
        elif "active" in form.changed_data:  # as the API's PATCH: off fails what waits (re-sent for ever else)
            services.switch(obj, active=obj.active, how="in the admin")
        super().save_model(request, obj, form, change)


class AttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    readonly_fields = ["number", "outcome", "started_at", "duration_ms", "status_code", "response_body", "error"]
    fields = readonly_fields


@admin.register(Delivery)
class DeliveryAdmin(CheckedSelection, admin.ModelAdmin):
    list_display = ["id", "event", "subscription", "status", "attempts", "last_status_code", "next_attempt_at",
                    "created_at"]
    list_filter = ["status", "event"]
    search_fields = ["id", "task_id", "subscription__url"]
    raw_id_fields = ["subscription"]
    readonly_fields = ["attempts", "sent_at", "in_flight_until", "last_status_code", "last_error", "finished_at"]
    inlines = [AttemptInline]
    actions = ["redeliver"]

    @admin.action(description="Redeliver now (same webhook-id)", permissions=["change"])
    def redeliver(self, request: Any, queryset: Any) -> None:
        sent = 0
        for row in queryset:
            try:
                services.redeliver(delivery_row=row)
                sent += 1
            except Exception as exc:  # a disabled endpoint: say so, go on with the others
                self.message_user(request, f"{row.id}: {exc}", level=messages.WARNING)
        self.message_user(request, f"{sent} deliveries sent again")
