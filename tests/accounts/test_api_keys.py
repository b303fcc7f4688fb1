"""API keys for service accounts: created over the API (shown once, hashed at rest, prefix visible),
used instead of a JWT, limited by scope, revocable; managed in the admin too."""
from __future__ import annotations

import hashlib
import importlib
import logging
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey
from jobs.models import Task
from tests.conftest import key_client
from webhooks.models import Subscription

pytestmark = pytest.mark.django_db


keyed = key_client


def new_key(client: APIClient, **body) -> dict:
    response = client.post("/api/v1/auth/keys/", {"name": "ci", **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_key_is_shown_once_and_stored_only_as_a_hash(api, alice):
    client = api(alice)
    created = new_key(client)
    raw = created["key"]
    assert raw.startswith(f"cvk_{created['prefix']}_") and len(raw) > 40
    assert created["scopes"] == ["read", "submit"] and created["active"] is True

    row = ApiKey.objects.get(pk=created["id"])
    assert row.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in str(ApiKey.objects.filter(pk=row.pk).values().first())
    listed = client.get("/api/v1/auth/keys/").json()
    assert [k["prefix"] for k in listed] == [created["prefix"]]
    assert "key" not in listed[0] and "key" not in client.get(f"/api/v1/auth/keys/{row.pk}/").json()


def test_a_key_submits_and_reads_as_its_owner(api, alice, bob):
    raw = new_key(api(alice))["key"]
    for client in (keyed(raw), keyed(raw, header="authorization")):
        response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json")
        assert response.status_code == 201, response.content
        assert response.json()["owner"] == "alice"
    assert len(keyed(raw).get("/api/v1/tasks/").json()["results"]) == 2
    bobs = api(bob).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()
    assert keyed(raw).get(f"/api/v1/tasks/{bobs['id']}/").status_code == 404
    assert ApiKey.objects.get(user=alice).last_used_at is not None


def test_scopes_are_enforced(api, alice):
    read_only = new_key(api(alice), scopes=["read"])["key"]
    assert keyed(read_only).get("/api/v1/tasks/").status_code == 200
    denied = keyed(read_only).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json")
    assert denied.status_code == 403
    assert denied.json()["error"] == {"code": "permission_denied", "message": "this API key lacks the 'submit' scope"}

    submit_only = new_key(api(alice), scopes=["submit"])["key"]
    assert keyed(submit_only).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").status_code == 201
    assert keyed(submit_only).get("/api/v1/tasks/").status_code == 403


def test_only_a_key_with_the_webhooks_scope_manages_webhooks(api, alice):
    """A key made to submit (a CI job's) cannot point the owner's webhooks elsewhere, mint their signing
    secrets or replay past deliveries to a new URL: that takes the ``webhooks`` scope."""
    hook = api(alice).post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/a", "events": ["task.succeeded"]},
                           format="json").json()
    for scopes in (["submit"], ["read", "submit"]):
        ci = keyed(new_key(api(alice), scopes=scopes)["key"])
        refused = [
            ci.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/evil", "events": ["task.succeeded"]}, format="json"),
            ci.patch(f"/api/v1/webhooks/{hook['id']}/", {"url": "http://127.0.0.1:9/evil"}, format="json"),
            ci.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret/"),
            ci.delete(f"/api/v1/webhooks/{hook['id']}/"),
        ]
        for response in refused:
            assert response.status_code == 403, response.content
            assert response.json()["error"]["message"] == "this API key lacks the 'webhooks' scope"
        assert ci.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").status_code == 201
    assert api(alice).get(f"/api/v1/webhooks/{hook['id']}/").json()["url"] == "http://127.0.0.1:9/a"

    reader = keyed(new_key(api(alice), scopes=["read"])["key"])
    assert reader.get("/api/v1/webhooks/").status_code == 200  # listing them is a read
    manager = keyed(new_key(api(alice), scopes=["webhooks"])["key"])
    assert manager.patch(f"/api/v1/webhooks/{hook['id']}/", {"url": "http://127.0.0.1:9/b"},
                         format="json").status_code == 200
    assert manager.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").status_code == 403


def test_the_migration_keeps_webhooks_for_keys_that_could_read_and_submit(alice):
    from django.db import connection

    keys = {scopes: ApiKey.objects.create(user=alice, name=scopes, prefix=f"p{i}", key_hash="x",
                                          scopes=scopes.split(",") if scopes else [])
            for i, scopes in enumerate(["read,submit", "submit", "read", "read,submit,operate"])}
    migration = importlib.import_module("accounts.migrations.0002_webhooks_scope").Migration
    with connection.cursor() as cur:
        cur.execute(migration.operations[1].sql)
    after = {name: ApiKey.objects.get(pk=key.pk).scopes for name, key in keys.items()}
    assert after == {"read,submit": ["read", "submit", "webhooks"], "submit": ["submit"], "read": ["read"],
                     "read,submit,operate": ["read", "submit", "operate", "webhooks"]}


def test_operator_actions_need_the_operate_scope(api, olga):
    from rest_framework.views import APIView

    from accounts.authentication import required_scope
    from config.permissions import IsOperator

    class OperatorView(APIView):
        permission_classes = [IsOperator]

    assert required_scope("GET", OperatorView()) == "operate"
    assert required_scope("POST", APIView()) == "submit"
    plain = new_key(api(olga), scopes=["read", "submit"])["key"]
    operate = new_key(api(olga), scopes=["read", "operate"])["key"]
    if _has_route("/api/v1/queues/default/pause/"):
        assert keyed(plain).post("/api/v1/queues/default/pause/").status_code == 403
        assert keyed(operate).post("/api/v1/queues/default/pause/").status_code == 200
        keyed(operate).post("/api/v1/queues/default/resume/")


def _has_route(path: str) -> bool:
    from django.urls import Resolver404, resolve

    try:
        resolve(path)
        return True
    except Resolver404:
        return False


def test_revoked_expired_and_wrong_keys_are_401(api, alice):
    client = api(alice)
    created = new_key(client)
    raw = created["key"]
    assert keyed(raw).get("/api/v1/tasks/").status_code == 200

    revoked = client.post(f"/api/v1/auth/keys/{created['id']}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    response = keyed(raw).get("/api/v1/tasks/")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid, expired or revoked API key"

    expiring = new_key(client, expires_at="2099-01-01T00:00:00Z")
    assert keyed(expiring["key"]).get("/api/v1/tasks/").status_code == 200
    ApiKey.objects.filter(id=expiring["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert keyed(expiring["key"]).get("/api/v1/tasks/").status_code == 401
    assert keyed(raw[:-3] + "xyz").get("/api/v1/tasks/").status_code == 401
    assert keyed("cvk_nothing").get("/api/v1/tasks/").status_code == 401


def test_keys_are_private_and_cannot_mint_keys(api, alice, bob):
    created = new_key(api(alice))
    assert api(bob).get(f"/api/v1/auth/keys/{created['id']}/").status_code == 404
    assert api(bob).post(f"/api/v1/auth/keys/{created['id']}/revoke/").status_code == 404
    assert api(bob).get("/api/v1/auth/keys/").json() == []
    minted = keyed(created["key"]).post("/api/v1/auth/keys/", {"name": "x"}, format="json")
    assert minted.status_code == 403


def test_bad_scope_is_400(api, alice):
    response = api(alice).post("/api/v1/auth/keys/", {"name": "x", "scopes": ["root"]}, format="json")
    assert response.status_code == 400
    assert "scopes" in next(iter(response.json()["error"]["fields"]))


def test_admin_creates_a_key_shows_it_once_and_revokes(admin_client, alice, caplog):
    caplog.set_level(logging.DEBUG)
    response = admin_client.post("/admin/accounts/apikey/add/", {
        "user": alice.pk, "name": "from-admin", "scopes": ["read"], "expires_at_0": "", "expires_at_1": "",
    }, follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    raw = next(m for m in shown if "cvk_" in m).split(": ", 1)[1].split(" ")[0]
    assert raw not in caplog.text
    key = ApiKey.objects.get(name="from-admin")
    assert key.scopes == ["read"] and key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert keyed(raw).get("/api/v1/tasks/").status_code == 200

    admin_client.post("/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    assert keyed(raw).get("/api/v1/tasks/").status_code == 401


def test_a_key_that_would_expire_before_it_is_made_is_400_naming_expires_at(api, alice):
    response = api(alice).post("/api/v1/auth/keys/", {"name": "ci", "expires_at": "2020-01-01T00:00:00Z"},
                               format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"] == {"expires_at": ["must be in the future"]}
    assert not ApiKey.objects.exists()


def test_a_submit_with_webhook_url_needs_the_webhooks_scope_and_a_key_may_have_all_four(api, alice):
    # A submit-only key made a webhook (and got its secret) through webhook_url, and a key with every
    # scope was a 400 (at most 3).
    body = {"algorithm": "demo.noop", "webhook_url": "http://127.0.0.1:9/hook"}
    submit_only = keyed(new_key(api(alice), scopes=["submit"])["key"])
    for refused in (submit_only.post("/api/v1/tasks/", body, format="json"),
                    submit_only.post("/api/v1/tasks/batch/", {"tasks": [{"algorithm": "demo.noop"}, body]},
                                     format="json")):
        assert refused.status_code == 403, refused.content
        assert refused.json()["error"]["message"] == "this API key lacks the 'webhooks' scope (webhook_url)"
    assert not Subscription.objects.exists() and not Task.objects.exists()

    every = keyed(new_key(api(alice), scopes=["read", "submit", "webhooks", "operate"])["key"])
    created = every.post("/api/v1/tasks/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["webhook"]["secret"].startswith("whsec_")
