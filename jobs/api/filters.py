from __future__ import annotations

from datetime import timezone
from typing import Any

import django_filters
from django import forms
from django_filters.fields import BaseCSVField, IsoDateTimeField
from django_filters.widgets import BaseCSVWidget
from drf_spectacular.utils import extend_schema_field

from config.errors import InvalidInput
from jobs import services
from jobs.models import Status, Task

# The most ids one ``?id=`` may name: 100 UUIDs are about 3.9 KB of URL (with ``%2C`` between them), well
# under the 16 KiB that daphne (Twisted) takes for the request line and headers together; past it Twisted
# answers a bare 400 or drops the connection before the application sees the request. The dashboard
# asks for at most 100 at a time.
ID_FILTER_MAX = 100
# A label is at most this long (``Task.labels``, and the submit checks it): a longer filter value
# matches no task, and the database would otherwise cut it short and match another label.
LABEL_MAX = Task._meta.get_field("labels").base_field.max_length  # type: ignore[attr-defined]
# A parameter that takes one value, given more than once (``?queue=a&queue=b``): a 400 naming it, never only
# the last one used (``QueryDict.get``), which would quietly drop the others, an invalid one included.
REPEATED = "given more than once: this parameter takes one value"


def one_value(query: Any, name: str) -> str | None:
    """The query's ``name`` (None when absent); given more than once, a 400 naming it (``REPEATED``)."""
    values = query.getlist(name) if hasattr(query, "getlist") else [query[name]] if name in query else []
    if len(values) > 1:
        raise InvalidInput(f"{name}: {REPEATED}", fields={name: [REPEATED]})
    return values[0] if values else None


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


class RepeatableCSVWidget(BaseCSVWidget):
    """A comma-separated list that may also come as the parameter repeated (``?id=a,b&id=c``, as a client
    sends an array with ``explode``): the values of every repetition, in order, as one list."""

    def value_from_datadict(self, data, files, name):  # type: ignore[no-untyped-def]
        values = data.getlist(name) if hasattr(data, "getlist") else []
        if len(values) > 1:
            return ",".join(values).split(",")  # as if given once, comma-separated
        return super().value_from_datadict(data, files, name)


class CappedCSVField(BaseCSVField):
    """A comma-separated list of at most ``ID_FILTER_MAX`` values (of every repetition of the parameter
    together); counted before any is parsed."""

    base_widget_class = RepeatableCSVWidget

    def clean(self, value):  # type: ignore[no-untyped-def]
        if value is not None and len(value) > ID_FILTER_MAX:
            raise forms.ValidationError(f"at most {ID_FILTER_MAX} ids (got {len(value)})", code="max_length")
        return super().clean(value)


class UUIDInFilter(django_filters.BaseInFilter, django_filters.UUIDFilter):
    """``?id=<uuid>,<uuid>,…``: these tasks, at most ``ID_FILTER_MAX`` (the dashboard fills rows it made
    from live events)."""

    base_field_class = CappedCSVField


class PriorityFormField(forms.Field):
    """0-9 or a priority's name (``low``, ``normal``, ``high``, ``critical``), as a submit takes it."""

    def to_python(self, value):  # type: ignore[no-untyped-def]
        if value in self.empty_values:
            return None
        try:
            return services.parse_priority(value)
        except InvalidInput as exc:
            raise forms.ValidationError((exc.fields or {}).get("priority", [exc.message])[0], code="invalid") from None


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                                {"type": "string", "enum": list(services.PRIORITY_NAMES)}]})
class PriorityFilter(django_filters.Filter):
    field_class = PriorityFormField


class OneValueEachForm(forms.Form):
    """A filter form whose parameters each take one value, but those that take several (a multiple choice,
    such as ``?status=A&status=B``; a ``RepeatableCSVWidget`` list, such as ``?id=``): one given more
    than once is an error naming it (``REPEATED``), in place of whatever its last value gave."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not hasattr(self.data, "getlist"):
            return cleaned
        for name, field in self.fields.items():
            widget = field.widget
            many = getattr(widget, "allow_multiple_selected", False) or isinstance(widget, RepeatableCSVWidget)
            if not many and len(self.data.getlist(self.add_prefix(name))) > 1:
                self.errors.pop(name, None)  # what its last value gave, if anything: beside the point
                self.add_error(name, forms.ValidationError(REPEATED, code="repeated"))
        return cleaned


class TaskFilter(django_filters.FilterSet):
    id = UUIDInFilter(field_name="id")
    status = django_filters.MultipleChoiceFilter(choices=Status.choices)
    queue = django_filters.CharFilter(field_name="queue_id")
    algorithm = django_filters.CharFilter()
    priority = PriorityFilter()
    label = django_filters.CharFilter(field_name="labels", lookup_expr="contains", method="filter_label",
                                      max_length=LABEL_MAX)
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Task
        form = OneValueEachForm
        fields = ["id", "status", "queue", "algorithm", "priority", "label", "created_after", "created_before"]

    def filter_label(self, queryset, name, value):  # type: ignore[no-untyped-def]
        return queryset.filter(labels__contains=[value])
