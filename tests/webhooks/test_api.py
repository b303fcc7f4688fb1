"""The subscription API: CRUD, the secret shown once, rotation, event names, isolation between users."""
from __future__ import annotations

import socket
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db


def create(client, receiver, **extra):
    body = {"url": receiver.url, "events": ["task.*"], **extra}
    response = client.post("/api/v1/webhooks/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_create_shows_the_secret_once_then_list_detail_update_delete(alice, api, receiver):
    client = api(alice)
    hook = create(client, receiver, description="ci", events=["task.succeeded", "task.failed"])
    assert hook["secret"].startswith("whsec_")
    assert hook["events"] == ["task.succeeded", "task.failed"] and hook["active"] is True

    listed = client.get("/api/v1/webhooks/").json()["results"]
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    detail = client.get(f"/api/v1/webhooks/{hook['id']}/").json()
    assert "secret" not in detail and detail["description"] == "ci"

    patched = client.patch(f"/api/v1/webhooks/{hook['id']}/", {"events": ["task.*"], "active": False},
                           format="json").json()
    assert patched["events"] == ["task.*"] and patched["active"] is False and patched["disabled_at"]

    assert client.delete(f"/api/v1/webhooks/{hook['id']}/").status_code == 204
    assert client.get(f"/api/v1/webhooks/{hook['id']}/").status_code == 404


def test_rotate_secret_returns_a_new_secret_and_keeps_the_old_one_for_a_day(alice, api, receiver):
    from webhooks.models import Subscription

    client = api(alice)
    hook = create(client, receiver)
    response = client.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret/")
    assert response.status_code == 200
    rotated = response.json()
    assert rotated["secret"] != hook["secret"] and rotated["secret_rotating_until"]
    row = Subscription.objects.get(id=hook["id"])
    assert row.previous_secret == hook["secret"]
    assert 23.9 * 3600 < (row.previous_secret_expires_at - row.updated_at).total_seconds() <= 24 * 3600


def test_a_second_rotation_within_the_grace_period_keeps_every_earlier_key_signing(alice, api, receiver):
    # A double click, or a retry of a rotation whose response was lost: the key in between was never seen by
    # the receiver, and the second rotation used to drop the original key at once (every delivery then
    # failed the receiver's check).
    from standardwebhooks import Webhook

    from webhooks import delivery, signing
    from webhooks.models import Delivery

    client = api(alice)
    hook = create(client, receiver)
    first = client.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret/").json()
    second = client.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret/").json()
    row = Delivery.objects.create(subscription_id=hook["id"], event="task.created", payload={"seq": 1},
                                  task_id="11111111-1111-1111-1111-111111111111", seq=1,
                                  next_attempt_at=timezone.now(), sent_at=timezone.now())

    claimed = delivery.claim(delivery_id=str(row.id))
    headers = signing.headers(claimed.secrets, row.webhook_id, int(timezone.now().timestamp()), claimed.body)

    for secret in (hook["secret"], first["secret"], second["secret"]):
        assert Webhook(secret).verify(claimed.body, headers) == {"seq": 1}
    until = [datetime.fromisoformat(r["secret_rotating_until"]) for r in (first, second)]
    assert until[1] > until[0]  # the earlier keys sign until the second rotation's grace period ends


def test_secret_rotating_until_is_null_once_the_grace_period_has_passed(alice, api, receiver):
    from webhooks.models import Subscription

    client = api(alice)
    hook = create(client, receiver)
    assert hook["secret_rotating_until"] is None  # never rotated
    client.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret/")
    assert client.get(f"/api/v1/webhooks/{hook['id']}/").json()["secret_rotating_until"]

    Subscription.objects.filter(id=hook["id"]).update(previous_secret_expires_at=timezone.now() - timedelta(seconds=1))

    assert client.get(f"/api/v1/webhooks/{hook['id']}/").json()["secret_rotating_until"] is None
    assert client.get("/api/v1/webhooks/").json()["results"][0]["secret_rotating_until"] is None


@pytest.mark.parametrize("events", [[], ["task.nope"], ["*"], ["task.log"]])
def test_unknown_or_empty_events_are_400(alice, api, receiver, events):
    response = api(alice).post("/api/v1/webhooks/", {"url": receiver.url, "events": events}, format="json")
    assert response.status_code == 400, response.content


def test_queue_events_are_for_operators_only(alice, olga, api, receiver):
    body = {"url": receiver.url, "events": ["queue.*"]}
    assert api(alice).post("/api/v1/webhooks/", body, format="json").status_code == 403
    assert api(olga).post("/api/v1/webhooks/", body, format="json").status_code == 201


def test_bob_gets_404_for_alices_webhook_and_its_deliveries(alice, bob, api, receiver):
    hook = create(api(alice), receiver)
    bob_client = api(bob)
    assert bob_client.get("/api/v1/webhooks/").json()["results"] == []
    for method, path in [("get", ""), ("patch", ""), ("delete", ""), ("post", "rotate-secret/"),
                         ("get", "deliveries/")]:
        response = getattr(bob_client, method)(f"/api/v1/webhooks/{hook['id']}/{path}", {}, format="json")
        assert response.status_code == 404, (method, path, response.content)
    assert api(alice).get(f"/api/v1/webhooks/{hook['id']}/").status_code == 200


def test_unknown_ids_are_404_not_500(alice, api):
    client = api(alice)
    assert client.get("/api/v1/webhooks/not-a-uuid/").status_code == 404
    assert client.get("/api/v1/webhooks/00000000-0000-0000-0000-000000000000/deliveries/").status_code == 404


def test_anonymous_is_401(client):
    assert client.get("/api/v1/webhooks/").status_code == 401


@pytest.mark.parametrize("url", ["http://☃.net/", "http://１２７.０.０.１０:8000/hook"])
def test_a_url_whose_host_httpx_cannot_send_to_is_400_naming_url(alice, api, url):
    # Python's IDNA 2003 codec accepts these hosts (the fullwidth one even resolves to 127.0.0.10); httpx's
    # IDNA 2008 parser refuses them, so no delivery to them could ever be sent.
    response = api(alice).post("/api/v1/webhooks/", {"url": url, "events": ["task.*"]}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]["url"]


@pytest.mark.parametrize("port", [0, 65536, 99999, "wrapped"])
def test_a_port_outside_1_to_65535_is_400_naming_url_on_create_and_update(alice, api, receiver, port):
    # "wrapped": the receiver's port + 65536, which was accepted and delivered to the receiver's port
    port = receiver.port + 65536 if port == "wrapped" else port
    url = f"http://127.0.0.1:{port}/hook"
    client = api(alice)

    response = client.post("/api/v1/webhooks/", {"url": url, "events": ["task.*"]}, format="json")
    assert response.status_code == 400, response.content
    assert "1-65535" in response.json()["error"]["fields"]["url"][0]

    hook = create(client, receiver)
    response = client.patch(f"/api/v1/webhooks/{hook['id']}/", {"url": url}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]["url"]
    assert client.get(f"/api/v1/webhooks/{hook['id']}/").json()["url"] == receiver.url


MALFORMED = ["http://exa mple.com/", "http:///hook", "http://-receiver-/hook", "http://" + "a" * 64 + ".com/",
             "receiver:8080/hook", "not a url",
             "http://[::1", "http://[127.0.0.1]/", "http://a[b/"]  # Python's urlsplit raised: a 500


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_url_is_400_naming_url(alice, api, url):
    response = api(alice).post("/api/v1/webhooks/", {"url": url, "events": ["task.*"]}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]["url"]


@pytest.mark.parametrize("url", ["http://[::1", "http://[127.0.0.1]/"])
def test_a_malformed_url_is_400_on_update_and_as_a_tasks_webhook_url(alice, api, receiver, url):
    client = api(alice)
    hook = create(client, receiver)
    response = client.patch(f"/api/v1/webhooks/{hook['id']}/", {"url": url}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]["url"]

    response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "webhook_url": url}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]["webhook_url"]


@pytest.fixture
def service_name(monkeypatch):
    """``receiver`` resolves to 127.0.0.1, as a Compose or Kubernetes service name resolves to its address."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real("127.0.0.1" if host == "receiver" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return "receiver"


def test_a_single_label_host_such_as_a_service_name_is_accepted_and_delivered_to(alice, api, receiver, service_name):
    from webhooks import delivery
    from webhooks.models import Delivery

    client = api(alice)
    response = client.post("/api/v1/webhooks/", {"url": f"http://{service_name}:{receiver.port}/hook",
                                                 "events": ["task.*"]}, format="json")
    assert response.status_code == 201, response.content
    hook = response.json()
    response = client.patch(f"/api/v1/webhooks/{hook['id']}/", {"url": f"http://{service_name}:{receiver.port}/v2"},
                            format="json")
    assert response.status_code == 200, response.content

    row = Delivery.objects.create(subscription_id=hook["id"], event="task.created", payload={"event": "task.created"},
                                  next_attempt_at=timezone.now())
    assert delivery.attempt(delivery_id=str(row.id)) == "SUCCEEDED"
    [request] = receiver.requests
    assert request.path == "/v2" and request.headers["host"] == f"{service_name}:{receiver.port}"
