"""``webhook_url`` at submit: one task's events go to that URL, signed with a secret returned at submit."""
from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from tests.conftest import wait_until
from tests.webhooks.test_delivery_e2e import all_succeeded, arrived, stored_events


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_tasks_webhook_url_gets_that_tasks_events_only(webhooks_worker, alice, api, receiver):
    client = api(alice)
    response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "webhook_url": receiver.url}, format="json")
    assert response.status_code == 201, response.content
    task = response.json()
    assert task["webhook"]["url"] == receiver.url and task["webhook"]["secret"].startswith("whsec_")
    other = client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()

    wait_until(lambda: arrived(receiver, task["id"]), message="the task's task.succeeded")
    wait_until(lambda: client.get(f"/api/v1/tasks/{other['id']}/").json()["status"] == "SUCCEEDED",
               message="the other task")
    bodies = [Webhook(task["webhook"]["secret"]).verify(r.body, r.headers) for r in receiver.ok()]
    assert [b["event"] for b in bodies] == stored_events(task["id"])
    assert {b["task_id"] for b in bodies} == {task["id"]}

    # The shortcut is an ordinary webhook of the owner's, with its delivery log; the secret is not shown again.
    hook = client.get(f"/api/v1/webhooks/{task['webhook']['id']}/").json()
    assert hook["task"] == task["id"] and "secret" not in hook
    assert len(wait_until(lambda: all_succeeded(client, hook["id"]), message="the delivery log")) == len(bodies)


@pytest.mark.django_db
def test_batch_items_each_get_their_own_webhook(alice, api, receiver):
    response = api(alice).post("/api/v1/tasks/batch/", {"tasks": [
        {"algorithm": "demo.noop", "webhook_url": receiver.url}, {"algorithm": "demo.noop"}]}, format="json")
    assert response.status_code == 201, response.content
    first, second = response.json()["tasks"]
    assert first["webhook"]["secret"].startswith("whsec_") and "webhook" not in second


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.5/hook", "ftp://x.org/"])
def test_a_private_or_odd_webhook_url_is_400_and_no_task_is_created(settings, alice, api, url):
    from jobs.models import Task

    settings.WEBHOOKS = {**settings.WEBHOOKS, "ALLOWED_NETWORKS": []}
    response = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop", "webhook_url": url}, format="json")
    assert response.status_code == 400, response.content
    assert "webhook_url" in response.json()["error"]["fields"]
    assert not Task.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["http://☃.net/", "http://１２７.０.０.１０:8000/hook"])
def test_a_webhook_url_httpx_cannot_send_to_is_400_and_no_task_is_created(alice, api, url):
    from jobs.models import Task

    response = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop", "webhook_url": url}, format="json")
    assert response.status_code == 400, response.content
    assert "webhook_url" in response.json()["error"]["fields"]
    assert not Task.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("port", [0, 65536, 70000])
def test_a_webhook_url_with_a_port_outside_1_to_65535_is_400_and_no_task_is_created(alice, api, port):
    from jobs.models import Task

    url = f"http://127.0.0.1:{port}/hook"
    response = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop", "webhook_url": url}, format="json")
    assert response.status_code == 400, response.content
    assert "webhook_url" in response.json()["error"]["fields"]
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_a_webhook_url_on_a_service_name_is_accepted_at_submit(alice, api, receiver, monkeypatch):
    """A Compose or Kubernetes service name (a single-label host) is a receiver like any other."""
    import socket

    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *a, **kw: real("127.0.0.1" if host == "receiver" else host, *a, **kw))
    url = f"http://receiver:{receiver.port}/hook"
    response = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop", "webhook_url": url}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["webhook"]["url"] == url
