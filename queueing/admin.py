"""Admin for operators: queues (pause/resume, concurrency), the worker registry (read-only), and
tasks with their events (jobs/admin.py). Every action goes through the services, like the API."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db import models, transaction
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet
from django.http import HttpRequest

from config.admin_input import BoundedJSONField, CheckedSelection
from queueing import dispatch, services
from queueing.models import Queue, WorkerRecord


@admin.register(Queue)
class QueueAdmin(CheckedSelection, admin.ModelAdmin):
    list_display = ["name", "paused", "concurrency", "user_concurrency", "default_priority", "resources", "description"]
    list_editable = ["concurrency", "user_concurrency", "default_priority"]
    list_filter = ["paused"]
    search_fields = ["name", "description"]
    readonly_fields = ["paused", "created_at"]
    actions = ["pause", "resume"]
    # ``resources`` nested deeper than the JSON parser goes is a form error, not a RecursionError (a 500).
    formfield_overrides = {models.JSONField: {"form_class": BoundedJSONField}}

    def get_readonly_fields(self, request: HttpRequest, obj: Queue | None = None) -> list[str]:
        # The name is what tasks refer to (Task.queue is a foreign key to it) and the Celery queue's
        # name: renaming a queue with tasks fails on commit (a 500). Set once, when the queue is added.
        return [*self.readonly_fields, "name"] if obj is not None else list(self.readonly_fields)

    @admin.action(description="Pause the selected queues", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Queue]) -> None:
        for queue in queryset:
            services.pause(name=queue.name, by=request.user)
        self.message_user(request, f"paused {queryset.count()} queue(s)", messages.SUCCESS)

    @admin.action(description="Resume the selected queues", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Queue]) -> None:
        for queue in queryset:
            services.resume(name=queue.name, by=request.user)
        self.message_user(request, f"resumed {queryset.count()} queue(s)", messages.SUCCESS)

    def save_model(self, request: HttpRequest, obj: Queue, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # A larger window is filled at once, as with PATCH /api/v1/queues/{name}/.
        transaction.on_commit(lambda: dispatch.dispatch([obj.name]), robust=True)


@admin.register(WorkerRecord)
class WorkerRecordAdmin(CheckedSelection, admin.ModelAdmin):
    list_display = ["hostname", "alive", "queues", "pool", "concurrency", "pid", "version", "last_heartbeat",
                    "stopped_at"]
    search_fields = ["hostname"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkerRecord]:
        from queueing.reconciler import db_cutoff  # last_heartbeat is the database's clock: compared with it

        fresh = Q(stopped_at__isnull=True, last_heartbeat__gte=db_cutoff(settings.CONVEYOR["WORKER_STALE_SECONDS"]))
        return super().get_queryset(request).annotate(fresh=ExpressionWrapper(fresh, output_field=BooleanField()))

    @admin.display(boolean=True)
    def alive(self, obj: WorkerRecord) -> bool:
        return obj.fresh

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
