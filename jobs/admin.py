"""Tasks in the admin: filters, search by id and label, cancel/retry/priority actions through the
services (the same guarded transitions as the API), events inline and read-only."""
from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from config.admin_input import CheckedSelection
from config.errors import ConveyorError, InvalidInput
from jobs import services
from jobs.models import Task, TaskEvent


class TaskEventInline(admin.TabularInline):
    model = TaskEvent
    extra = 0
    can_delete = False
    ordering = ["seq"]
    fields = readonly_fields = ["seq", "event", "status", "data", "created_at"]

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(CheckedSelection, admin.ModelAdmin):
    list_display = ["id", "algorithm", "status", "queue", "priority", "owner", "labels", "created_at",
                    "started_at", "finished_at", "worker"]
    list_filter = ["status", "queue", "algorithm", "priority", ("owner", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["algorithm"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    show_full_result_count = False  # no COUNT(*) over a million rows on every page
    inlines = [TaskEventInline]
    actions = ["cancel", "retry", "raise_priority", "lower_priority"]

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        # State changes only through the actions (guarded transitions), never by editing the row.
        return [f.name for f in Task._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        tasks = super().get_queryset(request)
        if request.resolver_match is not None and request.resolver_match.url_name == "jobs_task_changelist":
            # A page of 100 rows shows none of these; each can hold megabytes (inline results, params).
            tasks = tasks.defer("result", "params", "progress_metrics")
        return tasks

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Task], search_term: str):  # type: ignore[no-untyped-def]
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(id=uuid.UUID(term)), False
        except ValueError:
            return queryset.filter(labels__contains=[term]) | queryset.filter(algorithm=term), False

    def _each(self, request: HttpRequest, queryset: QuerySet[Task], verb: str, fn) -> None:  # type: ignore[no-untyped-def]
        done, failed = 0, []
        for task in queryset:
            try:
                fn(task)
                done += 1
            except ConveyorError as exc:
                failed.append(f"{task.id}: {exc.message}")
        self.message_user(request, f"{verb} {done} task(s)", messages.SUCCESS)
        if failed:
            self.message_user(request, "; ".join(failed[:10]), messages.WARNING)

    @admin.action(description="Cancel the selected tasks", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        # The API's bulk cancel: 500 per transaction, however many "select all" picked.
        done = services.cancel_many(tasks=queryset, by=request.user)
        self.message_user(request, f"cancelled {done.cancelled} task(s), cancelling {done.cancelling} (running: "
                                   f"their workers stop them), already final {done.already_final}", messages.SUCCESS)

    @admin.action(description="Retry the selected (finished) tasks as new tasks", permissions=["change"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        # The API's bulk retry: a task that has a retry already is not retried again (a second click).
        done = services.retry_many(tasks=queryset, by=request.user)
        self.message_user(request, f"retried {done.retried} task(s); {done.already_retried} had a retry already "
                                   f"(not retried again); {done.not_final} not finished (left alone)",
                          messages.SUCCESS)

    @admin.action(description="Raise priority by one", permissions=["change"])
    def raise_priority(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._each(request, queryset, "raised", lambda t: _shift_priority(t, +1, request.user))

    @admin.action(description="Lower priority by one", permissions=["change"])
    def lower_priority(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._each(request, queryset, "lowered", lambda t: _shift_priority(t, -1, request.user))


def _shift_priority(task: Task, step: int, by: Any) -> Task:
    """One step up or down; a task already at 9 (or 0) is reported, not counted as changed."""
    priority = task.priority + step
    if not 0 <= priority <= 9:
        raise InvalidInput(f"already at priority {task.priority}")
    return services.change_priority(task_id=task.id, priority=priority, by=by)
