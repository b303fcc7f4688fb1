"""What the admin takes from a crafted form or changelist POST, checked before it reaches a query or a parser:
a message on the page, never a 500 (the non-negotiable the API keeps, kept by the admin too)."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Model, QuerySet
from django.forms.fields import InvalidJSONInput
from django.http import HttpRequest, HttpResponseBase


def invalid_ids(model: type[Model], values: list[str]) -> list[str]:
    """The values that are not an id of ``model``: not a UUID for a task, not a number for a queue (on these
    ``filter(pk__in=…)`` raised: a 500), or a number out of the column's range (no row has it)."""
    pk = model._meta.pk
    low, high = connection.ops.integer_field_ranges.get(pk.get_internal_type(), (None, None))
    bad = []
    for value in values:
        try:
            parsed = pk.to_python(value)
        except (ValidationError, ValueError, TypeError):
            bad.append(value)
            continue
        if low is not None and not low <= parsed <= high:
            bad.append(value)
    return bad


class CheckedSelection:
    """A ``ModelAdmin`` mixin: an action's ``_selected_action`` values that are not ids of the model refuse the
    whole action with a message on the changelist (nothing changed), as an empty selection does. Django's
    ``response_action`` put them into ``filter(pk__in=…)`` unchecked: a 500 for a value that is not a UUID
    (tasks, deliveries) or not a number (queues, API keys)."""

    model: type[Model]

    def response_action(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponseBase | None:
        bad = invalid_ids(self.model, request.POST.getlist(helpers.ACTION_CHECKBOX_NAME))
        if bad:
            shown = ", ".join(repr(value[:40]) for value in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3
                                                                        else "")
            self.message_user(  # type: ignore[attr-defined]
                request, f"Not {self.model._meta.verbose_name} ids: {shown}. No items have been changed.",
                messages.ERROR)
            return None  # the changelist again, with the message
        return super().response_action(request, queryset)  # type: ignore[misc]


class BoundedJSONField(forms.JSONField):
    """Django's JSON form field, with a value nested deeper than the parser goes (``[`` × 100000) a form error,
    "nested too deep", instead of a ``RecursionError`` (a 500) when the form is checked or shown again."""

    default_error_messages = {"too_deep": "nested too deep"}

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except RecursionError:
            raise ValidationError(self.error_messages["too_deep"], code="too_deep") from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return InvalidJSONInput(data)  # shown as typed, as Django shows JSON it cannot parse
