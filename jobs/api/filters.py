from __future__ import annotations

import django_filters

from jobs.models import Status, Task


class TaskFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=Status.choices)
    queue = django_filters.CharFilter(field_name="queue_id")
    algorithm = django_filters.CharFilter()
    priority = django_filters.NumberFilter()
    label = django_filters.CharFilter(field_name="labels", lookup_expr="contains", method="filter_label")
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Task
        fields = ["status", "queue", "algorithm", "priority", "label", "created_after", "created_before"]

    def filter_label(self, queryset, name, value):  # type: ignore[no-untyped-def]
        return queryset.filter(labels__contains=[value])
