"""What a staff user who is not a superuser can do in the admin is what their model permissions say, and
no more: no API key for another account, no action on a page they may only view, no signing key or
service token on a page they may view. (A security review of a shared deployment found each.)"""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from accounts import services as keys
from accounts.models import ApiKey
from webhooks import services as webhooks
from webhooks.models import Delivery

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9/hook"  # loopback: allowed by the tests' WEBHOOK_ALLOWED_NETWORKS; never called


@pytest.fixture
def staff_with():
    """``staff_with("view_apikey", …)``: a logged-in admin client of a staff user with just those permissions."""
    def make(*codenames: str) -> tuple[Client, object]:
        user = get_user_model().objects.create_user("sam", password="x", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
        client = Client()
        client.force_login(user)
        return client, user
    return make


def test_a_staff_user_adding_a_key_gets_one_of_their_own_not_of_the_account_they_name(staff_with, admin_user):
    client, sam = staff_with("add_apikey", "view_apikey")

    response = client.post("/admin/accounts/apikey/add/", {
        "user": admin_user.pk, "name": "as-root", "scopes": ["read", "operate"], "expires_at_0": "", "expires_at_1": ""})

    assert response.status_code == 302, response.content[:2000]
    assert not ApiKey.objects.filter(user=admin_user).exists()
    assert ApiKey.objects.get(name="as-root").user == sam


def test_a_keys_owner_cannot_be_changed_so_no_one_hands_their_key_to_another_account(staff_with, admin_user):
    client, sam = staff_with("change_apikey", "view_apikey")
    key, raw = keys.create_key(user=sam, name="mine", scopes=["read", "operate"], expires_at=None)

    response = client.post(f"/admin/accounts/apikey/{key.pk}/change/", {
        "user": admin_user.pk, "name": "mine", "scopes": "read,operate", "expires_at_0": "", "expires_at_1": "",
        "revoked_at_0": "", "revoked_at_1": ""})

    assert response.status_code == 302, response.context["adminform"].form.errors  # saved
    key.refresh_from_db()
    assert key.user == sam and keys.verify(raw).user == sam


def test_a_view_only_staff_user_cannot_revoke_keys_nor_redeliver(staff_with, alice):
    client, _ = staff_with("view_apikey", "view_delivery")
    key, _ = keys.create_key(user=alice, name="ci", scopes=["read"], expires_at=None)
    hook = webhooks.subscribe(owner=alice, url=URL, events=["task.*"])
    row = Delivery.objects.create(subscription=hook, event="task.created", payload={}, status="FAILED",
                                  next_attempt_at=timezone.now())

    client.post("/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    client.post("/admin/webhooks/delivery/", {"action": "redeliver", "_selected_action": [row.id]})

    key.refresh_from_db()
    row.refresh_from_db()
    assert key.revoked_at is None and row.status == "FAILED"


def test_no_admin_page_shows_a_webhooks_signing_key_nor_a_view_only_user_a_services_token(staff_with, alice):
    from algorithms.remote.models import RemoteService

    client, _ = staff_with("view_subscription", "view_remoteservice")
    hook = webhooks.subscribe(owner=alice, url=URL, events=["task.*"])
    hook = webhooks.rotate_secret(subscription=hook)
    service = RemoteService.objects.create(name="svc", kind="grpc", address="127.0.0.1:9", auth_token="tok-s3cret")

    page = client.get(f"/admin/webhooks/subscription/{hook.id}/change/").content.decode()
    assert page and hook.secret not in page and hook.previous_secret not in page
    page = client.get(f"/admin/algorithms/remoteservice/{service.pk}/change/")
    assert page.status_code == 200 and "tok-s3cret" not in page.content.decode()


def test_a_webhook_added_in_the_admin_gets_a_signing_key_shown_once(admin_client, alice):
    from webhooks.models import Subscription

    response = admin_client.post("/admin/webhooks/subscription/add/", {
        "owner": alice.pk, "url": URL, "events": "task.*", "description": "", "active": "on"}, follow=True)

    hook = Subscription.objects.get(url=URL)
    assert hook.secret.startswith("whsec_")
    assert any(hook.secret in str(m) for m in response.context["messages"])
