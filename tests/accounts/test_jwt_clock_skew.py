"""Web hosts whose clocks differ by seconds accept each other's tokens: a token issued on a host a few
seconds ahead has its ``iat`` in the future here, and PyJWT refuses that with no leeway (a user logged in
on one host got 401 from the next, and the dashboard logged itself out). Beyond ``JWT_LEEWAY_SECONDS``
(30 s) a token from the future, and one expired that long ago, are still refused."""
from __future__ import annotations

from datetime import timedelta

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

pytestmark = pytest.mark.django_db


def issued_ahead(token, seconds: int) -> str:
    """``token`` as a host whose clock is ``seconds`` ahead of this one would have issued it."""
    for claim in ("iat", "exp"):
        token[claim] = token[claim] + seconds
    return str(token)


def get_tasks(access: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client.get("/api/v1/tasks/").status_code


def test_tokens_from_a_host_seconds_ahead_are_accepted_and_far_ones_are_not(alice):
    assert get_tasks(issued_ahead(AccessToken.for_user(alice), 5)) == 200
    assert get_tasks(issued_ahead(AccessToken.for_user(alice), 25)) == 200
    assert get_tasks(issued_ahead(AccessToken.for_user(alice), 120)) == 401
    refresh = APIClient().post("/api/v1/auth/token/refresh/",
                               {"refresh": issued_ahead(RefreshToken.for_user(alice), 10)})
    assert refresh.status_code == 200, refresh.content
    assert get_tasks(refresh.json()["access"]) == 200


def test_an_expired_token_is_refused_once_the_leeway_has_passed(alice):
    token = AccessToken.for_user(alice)
    token.set_exp(lifetime=-timedelta(seconds=10))
    assert get_tasks(str(token)) == 200  # expired 10 s ago: within the leeway of a clock that is behind
    token.set_exp(lifetime=-timedelta(seconds=60))
    assert get_tasks(str(token)) == 401
