"""The admin's login form is on the per-IP anonymous limit too: its session works on the API, so without
it password guessing would go around the token endpoint's limit."""
from __future__ import annotations

import uuid

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tests.conftest import PASSWORD
from tests.edge.test_rate_limits import clear_of_window_edge

pytestmark = pytest.mark.django_db


@pytest.fixture
def limits(settings):
    def set_(**values: int) -> None:
        settings.RATE_LIMITS = {**settings.RATE_LIMITS, **values}
    return set_


def an_ip() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.9"


def guess(client: Client, password: str = "guess") -> object:
    return client.post("/admin/login/?next=/admin/", {"username": "boss", "password": password})


def test_admin_login_guesses_get_429_after_the_anon_limit(django_user_model, limits):
    limits(anon=3)
    django_user_model.objects.create_user("boss", password=PASSWORD, is_staff=True)
    ip = an_ip()
    clear_of_window_edge(f"ip:{ip}")  # the four guesses below fall in one window of the per-IP count
    client = Client(REMOTE_ADDR=ip)
    assert [guess(client).status_code for _ in range(3)] == [200] * 3  # the form again, with its error
    limited = guess(client, PASSWORD)
    assert limited.status_code == 429 and 1 <= int(limited["Retry-After"]) <= 61
    assert limited.json()["error"]["code"] == "throttled"
    assert client.get("/api/v1/tasks/").status_code == 401  # no session was made
    assert Client(REMOTE_ADDR=an_ip()).get("/admin/login/").status_code == 200  # the form itself still shows


def test_admin_and_token_guesses_share_one_count(django_user_model, limits):
    limits(anon=2)
    django_user_model.objects.create_user("boss", password=PASSWORD, is_staff=True)
    ip = an_ip()
    clear_of_window_edge(f"ip:{ip}")
    assert guess(Client(REMOTE_ADDR=ip)).status_code == 200
    wrong = {"username": "boss", "password": "guess"}
    assert APIClient(REMOTE_ADDR=ip).post("/api/v1/auth/token/", wrong, format="json").status_code == 401
    assert guess(Client(REMOTE_ADDR=ip)).status_code == 429
