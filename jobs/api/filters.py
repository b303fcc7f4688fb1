from __future__ import annotations

from datetime import timezone

import django_filters

from jobs.models import Status, Task


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """ISO 8601 in, UTC to the database: PostgreSQL refuses offsets beyond ±15:59 (``…-21:30``), which
    Python parses happily, so the value would otherwise reach the query and fail there (a 500)."""

    def filter(self, qs, value):  # type: ignore[no-untyped-def]
        return super().filter(qs, value.astimezone(timezone.utc) if value else value)


class TaskFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=Status.choices)
    queue = django_filters.CharFilter(field_name="queue_id")
    algorithm = django_filters.CharFilter()
    priority = django_filters.NumberFilter()
    label = django_filters.CharFilter(field_name="labels", lookup_expr="contains", method="filter_label")
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Task
        fields = ["status", "queue", "algorithm", "priority", "label", "created_after", "created_before"]

    def filter_label(self, queryset, name, value):  # type: ignore[no-untyped-def]
        return queryset.filter(labels__contains=[value])
