from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages

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


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
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
class DeliveryAdmin(admin.ModelAdmin):
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
