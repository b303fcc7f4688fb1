"""Operators register remote services here (or in REMOTE_SERVICES_FILE) and refresh discovery on demand."""
from __future__ import annotations

from typing import Any

from django.contrib import admin, messages

from algorithms.remote import discovery
from algorithms.remote.models import RemoteRun, RemoteService
from config.admin_input import CheckedSelection


@admin.register(RemoteService)
class RemoteServiceAdmin(CheckedSelection, admin.ModelAdmin):
    list_display = ("name", "kind", "address", "enabled", "health", "scheme_count", "discovered_at", "source")
    list_filter = ("kind", "health", "enabled", "source")
    readonly_fields = ("source", "schemes", "discovered_at", "discovery_error", "health", "checked_at", "health_error")
    actions = ["discover_now", "check_health_now"]

    def get_exclude(self, request: Any, obj: Any = None) -> list[str]:
        """The service's token only for those who may change it: a view-only page showed it in clear."""
        return [] if self.has_change_permission(request, obj) else ["auth_token"]

    @admin.display(description="schemes")
    def scheme_count(self, obj: RemoteService) -> int:
        return len(obj.schemes)

    def save_model(self, request: Any, obj: RemoteService, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.enabled:
            self._report(request, discovery.refresh_guarded(obj))

    @admin.action(description="Discover schemes now", permissions=["change"])
    def discover_now(self, request: Any, queryset: Any) -> None:
        for service in queryset:
            self._report(request, discovery.refresh_guarded(service))

    @admin.action(description="Check health now", permissions=["change"])
    def check_health_now(self, request: Any, queryset: Any) -> None:
        for service in queryset:
            up = discovery.check_health(service)
            self.message_user(request, f"{service.name}: {'up' if up else 'down'}",
                              messages.SUCCESS if up else messages.ERROR)

    def _report(self, request: Any, report: discovery.Discovery) -> None:
        if report.error and not report.accepted and not report.rejected:
            self.message_user(request, f"{report.service}: {report.error}", messages.ERROR)
            return
        self.message_user(request, f"{report.service}: {len(report.accepted)} scheme(s) available: "
                          f"{', '.join(report.accepted) or 'none'}", messages.SUCCESS)
        for name, why in report.rejected.items():
            self.message_user(request, f"{report.service}: scheme {name!r} rejected: {why}", messages.ERROR)


@admin.register(RemoteRun)
class RemoteRunAdmin(CheckedSelection, admin.ModelAdmin):
    list_display = ("task", "service", "remote_id", "attempt", "attached", "updated_at")
    list_filter = ("service",)
    raw_id_fields = ("task",)
