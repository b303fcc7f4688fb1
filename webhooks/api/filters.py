from __future__ import annotations

from typing import Any

import django_filters

from webhooks.models import Delivery, DeliveryStatus


class DeliveryFilter(django_filters.FilterSet):
    """``?status=``, ``?event=`` and ``?task_id=`` of the delivery log. Through a form, not straight into the
    ORM: a value the database cannot compare (a NUL character), a status that does not exist or a task id
    that is no UUID is a 400 naming it."""

    status = django_filters.ChoiceFilter(choices=DeliveryStatus.choices)
    event = django_filters.CharFilter(max_length=50)
    task_id = django_filters.UUIDFilter()

    class Meta:
        model = Delivery
        fields = ["status", "event", "task_id"]

    def __init__(self, data: Any = None, *args: Any, **kwargs: Any) -> None:
        if data is not None and data.get("status"):
            data = data.copy()  # ?status=failed has always been accepted, like FAILED
            data["status"] = data["status"].upper()
        super().__init__(data, *args, **kwargs)
