from __future__ import annotations

from typing import Any

import django_filters

from jobs.api.filters import OneValueEachForm
from webhooks.api.serializers import DELIVERED_EVENTS
from webhooks.models import Delivery, DeliveryStatus


class DeliveryFilter(django_filters.FilterSet):
    """``?status=``, ``?event=`` and ``?task_id=`` of the delivery log. Through a form, not straight into the
    ORM: a value the database cannot compare (a NUL character), a status that does not exist or a task id
    that is no UUID or an event no delivery carries is a 400 naming it."""

    status = django_filters.ChoiceFilter(choices=DeliveryStatus.choices)
    event = django_filters.ChoiceFilter(choices=[(name, name) for name in DELIVERED_EVENTS])
    task_id = django_filters.UUIDFilter()

    class Meta:
        model = Delivery
        form = OneValueEachForm  # ?status=A&status=B is a 400 naming status, not the last one's deliveries
        fields = ["status", "event", "task_id"]

    def __init__(self, data: Any = None, *args: Any, **kwargs: Any) -> None:
        if data is not None and data.get("status"):
            data = data.copy()  # ?status=failed has always been accepted, like FAILED
            data.setlist("status", [value.upper() for value in data.getlist("status")])
        super().__init__(data, *args, **kwargs)
