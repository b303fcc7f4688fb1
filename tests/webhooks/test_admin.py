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


@pytest.mark.parametrize(("url", "error"), [
    ("http://receiver:{port}/hook", None),  # a service name, as the API allows
    ("http://127.0.0.1:70000/hook", "1-65535"),
    ("ftp://127.0.0.1/hook", "http"),
])
def test_the_admin_form_checks_a_url_as_the_api_does(alice, receiver, monkeypatch, url, error):
    import socket

    from django.forms.models import model_to_dict

    from webhooks.admin import SubscriptionForm

    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *a, **kw: real("127.0.0.1" if host == "receiver" else host, *a, **kw))
    hook = services.subscribe(owner=alice, url=receiver.url, events=["task.*"])
    data = {key: value for key, value in model_to_dict(hook).items() if value is not None}
    form = SubscriptionForm(data={**data, "url": url.format(port=receiver.port)}, instance=hook)
    if error is None:
        assert form.is_valid(), form.errors
    else:
        assert not form.is_valid() and error in " ".join(form.errors["url"]), form.errors


def test_turning_an_endpoint_off_in_the_admin_fails_what_waits_as_the_api_does(admin_client, alice, receiver):
    """The admin saved ``active=False`` alone: its pending deliveries stayed PENDING, re-sent by the beat's
    ``send_due`` for ever and keeping their tasks from retention."""
    from django.forms.models import model_to_dict

    hook = services.subscribe(owner=alice, url=receiver.url, events=["task.*"])
    waiting = Delivery.objects.create(subscription=hook, event="task.created", payload={}, status="PENDING",
                                      next_attempt_at=timezone.now())
    form = {key: value for key, value in model_to_dict(hook).items()
            if value is not None and key not in {"id", "secret", "previous_secret", "active"}}
    form["events"] = ",".join(hook.events) if isinstance(hook.events, list) else hook.events

    response = admin_client.post(f"/admin/webhooks/subscription/{hook.id}/change/", form)

    assert response.status_code == 302, response.content.decode()[-3000:]
    hook.refresh_from_db()
    waiting.refresh_from_db()
    assert hook.active is False and hook.disabled_reason == "turned off in the admin"
    assert (waiting.status, waiting.last_error) == ("FAILED", "endpoint turned off in the admin")
