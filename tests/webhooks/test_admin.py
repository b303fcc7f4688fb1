"""The admin lists subscriptions and deliveries (with their attempts) and redelivers on request."""
from __future__ import annotations

import pytest
from django.utils import timezone

from webhooks import services
from webhooks.models import Delivery

pytestmark = pytest.mark.django_db


def test_admin_pages_and_the_redeliver_action(admin_client, alice, receiver):
    hook = services.subscribe(owner=alice, url=receiver.url, events=["task.*"])
    row = Delivery.objects.create(subscription=hook, event="task.created", payload={}, status="FAILED",
                                  next_attempt_at=timezone.now())

    assert admin_client.get("/admin/webhooks/subscription/").status_code == 200
    assert admin_client.get(f"/admin/webhooks/subscription/{hook.id}/change/").status_code == 200
    assert admin_client.get("/admin/webhooks/delivery/").status_code == 200
    assert admin_client.get(f"/admin/webhooks/delivery/{row.id}/change/").status_code == 200

    response = admin_client.post("/admin/webhooks/delivery/", {"action": "redeliver", "_selected_action": [row.id]})
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.status == "PENDING"
