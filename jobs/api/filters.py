from __future__ import annotations

from datetime import timezone

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField

from jobs.models import Status, Task


class UtcDateTimeField(IsoDateTimeField):
    """ISO 8601 in, UTC out: PostgreSQL refuses offsets beyond ±15:59 (``…-21:30``), which Python parses
    happily, so the value would otherwise reach the query and fail there (a 500). A time that has no UTC
    equivalent (``0001-01-01T00:00:00+15:00``) is out of range, a 400 naming the parameter."""

    def to_python(self, value):  # type: ignore[no-untyped-def]
        parsed = super().to_python(value)
        try:
            return parsed.astimezone(timezone.utc) if parsed else parsed
        except OverflowError:
            raise forms.ValidationError("out of range", code="invalid") from None


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField


class UUIDInFilter(django_filters.BaseInFilter, django_filters.UUIDFilter):
    """``?id=<uuid>,<uuid>,…``: these tasks (the dashboard fills rows it made from live events)."""


class TaskFilter(django_filters.FilterSet):
    id = UUIDInFilter(field_name="id")
    status = django_filters.MultipleChoiceFilter(choices=Status.choices)
    queue = django_filters.CharFilter(field_name="queue_id")
    algorithm = django_filters.CharFilter()
    priority = django_filters.NumberFilter()
    label = django_filters.CharFilter(field_name="labels", lookup_expr="contains", method="filter_label")
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Task
        fields = ["id", "status", "queue", "algorithm", "priority", "label", "created_after", "created_before"]

    def filter_label(self, queryset, name, value):  # type: ignore[no-untyped-def]
        return queryset.filter(labels__contains=[value])
