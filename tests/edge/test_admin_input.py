"""Odd input in the admin is a message on the page, never a 500, and never saved as typed: an action POST whose
selected ids are not ids of the model, a queue's ``resources`` nested deeper than the JSON parser goes, and a
webhook's events the API refuses. (A review found a 500 for each of the first two; the admin saved the third.)"""
from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from accounts import services as keys
from accounts.models import ApiKey
from jobs.models import Task
from queueing.models import Queue
from tests.conftest import error_fields
from tests.queueing.conftest import make_queue
from webhooks import services as webhooks
from webhooks.models import Delivery, Subscription

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9/hook"  # loopback: allowed by the tests' WEBHOOK_ALLOWED_NETWORKS; never called
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def browser(admin_user) -> Client:
    """A superuser's admin session that answers a server error with its 500 page, as a browser sees it."""
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    return client


def page(response) -> str:  # type: ignore[no-untyped-def]
    return response.content.decode()


# --- action POSTs with ids that are not ids --------------------------------------------------------------

def _task(alice):  # type: ignore[no-untyped-def]
    make_queue("default")
    task = Task.objects.create(owner=alice, algorithm="demo.noop", queue_id="default")
    return task, lambda: Task.objects.get(pk=task.pk).status == "PENDING"


def _queue(alice):  # type: ignore[no-untyped-def]
    queue = make_queue("q1")
    return queue, lambda: Queue.objects.get(pk=queue.pk).paused is False


def _key(alice):  # type: ignore[no-untyped-def]
    key, _ = keys.create_key(user=alice, name="ci", scopes=["read"], expires_at=None)
    return key, lambda: ApiKey.objects.get(pk=key.pk).revoked_at is None


def _delivery(alice):  # type: ignore[no-untyped-def]
    hook = webhooks.subscribe(owner=alice, url=URL, events=["task.*"])
    row = Delivery.objects.create(subscription=hook, event="task.created", payload={}, status="FAILED",
                                  next_attempt_at=timezone.now())
    return row, lambda: Delivery.objects.get(pk=row.pk).status == "FAILED"


def _subscription(alice):  # type: ignore[no-untyped-def]
    hook = webhooks.subscribe(owner=alice, url=URL, events=["task.*"])
    return hook, lambda: Subscription.objects.filter(pk=hook.pk).exists()


def _service(alice):  # type: ignore[no-untyped-def]
    from algorithms.remote.models import RemoteService

    service = RemoteService.objects.create(name="svc", kind="grpc", address="127.0.0.1:9", enabled=True)
    return service, lambda: RemoteService.objects.filter(pk=service.pk).exists()


@pytest.mark.parametrize(("changelist", "action", "make", "what"), [
    ("/admin/jobs/task/", "cancel", _task, "task"),
    ("/admin/queueing/queue/", "pause", _queue, "queue"),
    ("/admin/accounts/apikey/", "revoke", _key, "API key"),
    ("/admin/webhooks/delivery/", "redeliver", _delivery, "delivery"),
    ("/admin/webhooks/subscription/", "delete_selected", _subscription, "subscription"),
    ("/admin/algorithms/remoteservice/", "delete_selected", _service, "remote service"),
], ids=["task", "queue", "apikey", "delivery", "subscription", "remote-service"])
@pytest.mark.parametrize("bad", ["not-an-id", "1\x00", "99999999999999999999", "12" * 40])
def test_an_action_on_ids_that_are_not_ids_is_refused_with_a_message_and_changes_nothing(
        browser, alice, changelist, action, make, what, bad):
    row, unchanged = make(alice)

    response = browser.post(changelist, {"action": action, "index": 0, "_selected_action": [row.pk, bad]},
                            follow=True)

    assert response.status_code == 200, page(response)[-3000:]  # back on the changelist, not a 500 page
    assert response.redirect_chain == [(changelist, 302)]
    assert f"Not {what} ids: " in page(response)
    assert "No items have been changed." in page(response)
    assert unchanged()
    # The same action on the real id alone still works (the check refuses only what is not an id).
    assert browser.post(changelist, {"action": action, "index": 0,
                                     "_selected_action": [row.pk]}).status_code in (200, 302)


def test_an_action_on_real_ids_is_done_as_before(browser, alice):
    row, unchanged = _queue(alice)

    response = browser.post("/admin/queueing/queue/", {"action": "pause", "index": 0, "_selected_action": [row.pk]})

    assert response.status_code == 302
    assert not unchanged()  # paused


# --- a queue's resources nested too deep -----------------------------------------------------------------

def queue_form(**fields: object) -> dict[str, object]:
    return {"name": "deep", "concurrency": 2, "default_priority": 5, "description": "", "user_concurrency": 0,
            "resources": "{}", **fields}


def test_resources_nested_too_deep_are_a_form_error_when_a_queue_is_added(browser):
    response = browser.post("/admin/queueing/queue/add/", queue_form(resources=DEEP))

    assert response.status_code == 200, page(response)[-3000:]
    assert response.context["adminform"].form.errors["resources"] == ["nested too deep"]
    assert "nested too deep" in page(response)
    assert not Queue.objects.filter(name="deep").exists()


@pytest.mark.parametrize("resources", [DEEP, "[" * 100_000, '{"a":' * 900 + "1" + "}" * 900])
def test_resources_nested_too_deep_leave_a_queue_as_it_was(browser, resources):
    queue = make_queue("q1", resources={"gpu": 1})

    response = browser.post(f"/admin/queueing/queue/{queue.pk}/change/", queue_form(name="q1", resources=resources))

    assert response.status_code == 200, page(response)[-3000:]
    assert response.context["adminform"].form.errors["resources"]
    queue.refresh_from_db()
    assert queue.resources == {"gpu": 1}


# --- a webhook's events as the API checks them -----------------------------------------------------------

def hook_form(owner, **fields: object) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {"owner": owner.pk, "url": URL, "events": "task.*", "description": "", "active": "on", "task": "",
            **fields}


def test_a_misspelt_or_quoted_event_is_refused_in_the_admin_with_the_apis_reason(browser, api, alice):
    events = 'task.succeded,"task.*"'
    refused = error_fields(api(alice).post("/api/v1/webhooks/", {"url": URL, "events": events.split(",")},
                                           format="json"))["events"]

    response = browser.post("/admin/webhooks/subscription/add/", hook_form(alice, events=events))

    assert response.status_code == 200, page(response)[-3000:]
    assert response.context["adminform"].form.errors["events"] == refused
    assert refused[0].startswith('unknown events task.succeded, "task.*"; use ')
    assert escape(refused[0]) in page(response)
    assert not Subscription.objects.exists()


def test_queue_events_for_an_owner_who_is_no_operator_are_refused_in_the_admin_as_by_the_api(browser, api, alice):
    hook = webhooks.subscribe(owner=alice, url=URL, events=["task.*"])
    by_api = api(alice).put(f"/api/v1/webhooks/{hook.pk}/", {"url": URL, "events": ["queue.*"]}, format="json")
    assert by_api.status_code == 403

    response = browser.post(f"/admin/webhooks/subscription/{hook.pk}/change/", hook_form(alice, events="queue.*"))

    assert response.status_code == 200, page(response)[-3000:]
    assert response.context["adminform"].form.errors["events"] == [by_api.json()["error"]["message"]]
    assert "queue events are for operators only" in page(response)
    hook.refresh_from_db()
    assert hook.events == ["task.*"]


def test_too_many_events_are_refused_in_the_admin_as_by_the_api(browser, alice):
    response = browser.post("/admin/webhooks/subscription/add/",
                            hook_form(alice, events=",".join(["task.created"] * 51)))

    assert response.status_code == 200, page(response)[-3000:]
    assert "no more than 50 elements" in page(response)
    assert not Subscription.objects.exists()


def test_events_the_api_takes_are_saved_by_the_admin_as_the_api_saves_them(browser, alice, olga):
    response = browser.post("/admin/webhooks/subscription/add/",
                            hook_form(alice, events=" task.succeeded , task.failed,task.succeeded"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Subscription.objects.get(owner=alice).events == ["task.succeeded", "task.failed"]

    response = browser.post("/admin/webhooks/subscription/add/", hook_form(olga, events="queue.*,task.*"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Subscription.objects.get(owner=olga).events == ["queue.*", "task.*"]
