"""Rate limits by tier on the shared Redis cache: 429 with Retry-After and the error body, per user
for submits/batches/reads, per IP for anonymous token attempts, and one count across web processes."""
from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from rest_framework.test import APIClient

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

SUBMIT = {"algorithm": "demo.noop"}


@pytest.fixture
def limits(settings):
    """Low limits for this test (the test settings' defaults are far above anything a test makes)."""
    def set_(**values: int) -> None:
        settings.RATE_LIMITS = {**settings.RATE_LIMITS, **values}
    return set_


def assert_limited(response, key: str) -> None:
    """A 429 whose ``Retry-After`` is the time left in ``key``'s window (a client that waits that long
    is served; one that retries at once is not)."""
    from django_ratelimit.core import _get_window

    assert response.status_code == 429, response.content
    left = _get_window(key, 60) - time.time()
    waits = int(response.headers["Retry-After"])
    assert abs(waits - max(1.0, left)) <= 2, (waits, left)
    error = response.json()["error"]
    assert error["code"] == "throttled" and "throttled" in error["message"]


def clear_of_window_edge(key: str, margin: float = 5.0) -> None:
    """django-ratelimit counts in fixed one-minute windows whose edge depends on the key, and a count
    that straddles an edge starts again from zero: wait past an edge that is due within ``margin``
    seconds, so that the requests a test counts next all fall in one window (``margin``: far more than
    they take; the default suits a few in-process requests). ``key`` is the counter's key as
    config/ratelimit.py makes it: ``user:<pk>`` for a signed-in user, ``ip:<address>`` else."""
    from django_ratelimit.core import _get_window

    left = _get_window(key, 60) - time.time()
    if left < margin:
        time.sleep(max(0.0, left) + 1.0)


def test_standard_user_gets_429_after_the_submit_limit(api, alice, limits):
    limits(standard=3)
    client = api(alice)
    clear_of_window_edge(f"user:{alice.pk}")
    codes = [client.post("/api/v1/tasks/", SUBMIT, format="json").status_code for _ in range(3)]
    assert codes == [201, 201, 201]
    assert_limited(client.post("/api/v1/tasks/", SUBMIT, format="json"), f"user:{alice.pk}")
    # reads are counted apart and still work
    assert client.get("/api/v1/tasks/").status_code == 200


def test_limits_are_per_user(api, alice, bob, limits):
    limits(standard=1)
    alice_once, alice_again, bob_client = api(alice), api(alice), api(bob)  # alice: two tokens, one count
    clear_of_window_edge(f"user:{alice.pk}")
    assert alice_once.post("/api/v1/tasks/", SUBMIT, format="json").status_code == 201
    assert bob_client.post("/api/v1/tasks/", SUBMIT, format="json").status_code == 201
    assert_limited(alice_again.post("/api/v1/tasks/", SUBMIT, format="json"), f"user:{alice.pk}")


def test_premium_group_gets_the_higher_tier(api, limits):
    from django.contrib.auth.models import Group, User

    limits(standard=1, premium=3)
    pat = User.objects.create_user("pat", password=PASSWORD)
    pat.groups.add(Group.objects.get_or_create(name="premium")[0])
    client = api(pat)
    clear_of_window_edge(f"user:{pat.pk}")
    assert [client.post("/api/v1/tasks/", SUBMIT, format="json").status_code for _ in range(3)] == [201] * 3
    assert_limited(client.post("/api/v1/tasks/", SUBMIT, format="json"), f"user:{pat.pk}")


@pytest.mark.parametrize("who", ["operator", "staff", "operator's key without operate"])
def test_operators_and_staff_get_the_higher_tier_whatever_their_credential(who, api, olga, limits):
    from django.contrib.auth.models import User

    from accounts import services as accounts

    limits(standard=1, premium=3)
    user = olga if who != "staff" else User.objects.create_user("stan", password=PASSWORD, is_staff=True)
    if who == "operator's key without operate":
        client = APIClient()
        client.credentials(HTTP_X_API_KEY=accounts.create_key(user=olga, name="ci", scopes=["read", "submit"])[1])
    else:
        client = api(user)
    clear_of_window_edge(f"user:{user.pk}")
    assert [client.post("/api/v1/tasks/", SUBMIT, format="json").status_code for _ in range(3)] == [201] * 3
    assert_limited(client.post("/api/v1/tasks/", SUBMIT, format="json"), f"user:{user.pk}")


def test_batch_calls_have_their_own_limit(api, alice, limits):
    limits(batch=2)
    client = api(alice)
    clear_of_window_edge(f"user:{alice.pk}")
    batch = {"tasks": [SUBMIT, SUBMIT]}
    assert [client.post("/api/v1/tasks/batch/", batch, format="json").status_code for _ in range(2)] == [201, 201]
    assert_limited(client.post("/api/v1/tasks/batch/", batch, format="json"), f"user:{alice.pk}")
    assert client.post("/api/v1/tasks/", SUBMIT, format="json").status_code == 201


def test_reads_are_limited_too(api, alice, limits):
    limits(read=2)
    client = api(alice)
    clear_of_window_edge(f"user:{alice.pk}")
    assert [client.get("/api/v1/algorithms/").status_code for _ in range(2)] == [200, 200]
    assert_limited(client.get("/api/v1/algorithms/"), f"user:{alice.pk}")


def test_anonymous_token_attempts_are_limited_per_ip(alice, limits):
    limits(anon=3)
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
    clear_of_window_edge(f"ip:{ip}")
    client = APIClient(REMOTE_ADDR=ip)
    wrong = {"username": "alice", "password": "guess"}
    assert [client.post("/api/v1/auth/token/", wrong, format="json").status_code for _ in range(3)] == [401] * 3
    # Even the right password waits now: the limit is on attempts from this address.
    right = {"username": "alice", "password": PASSWORD}
    assert_limited(client.post("/api/v1/auth/token/", right, format="json"), f"ip:{ip}")
    other = APIClient(REMOTE_ADDR="10.255.255.1")
    assert other.post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD},
                      format="json").status_code == 200


def test_spoofed_forwarded_for_does_not_escape_the_ip_limit(alice, limits):
    limits(anon=1)
    clear_of_window_edge("ip:10.254.0.9")  # the peer's address counts, not X-Forwarded-For
    client = APIClient(REMOTE_ADDR="10.254.0.9")
    wrong = {"username": "alice", "password": "guess"}
    assert client.post("/api/v1/auth/token/", wrong, format="json", HTTP_X_FORWARDED_FOR="1.1.1.1").status_code == 401
    assert_limited(client.post("/api/v1/auth/token/", wrong, format="json", HTTP_X_FORWARDED_FOR="2.2.2.2"),
                   "ip:10.254.0.9")


def test_a_client_locked_out_of_the_token_endpoint_can_still_read_the_api_docs(alice, limits):
    limits(anon=2, read=100)
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.8"
    clear_of_window_edge(f"ip:{ip}", margin=20)  # the lockout outlasts three doc pages (~0.3-1 s a schema)
    client = APIClient(REMOTE_ADDR=ip)
    wrong = {"username": "alice", "password": "guess"}
    assert [client.post("/api/v1/auth/token/", wrong, format="json").status_code for _ in range(2)] == [401] * 2
    assert_limited(client.post("/api/v1/auth/token/", wrong, format="json"), f"ip:{ip}")
    for path in ("/api/schema/", "/api/docs/", "/api/redoc/"):
        assert client.get(path).status_code == 200, path
    assert_limited(client.post("/api/v1/auth/token/", wrong, format="json"), f"ip:{ip}")  # reading adds no attempts


def test_anonymous_api_docs_are_limited_per_ip_as_reads(limits):
    limits(read=2)
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.9"
    clear_of_window_edge(f"ip:{ip}", margin=15)  # two schemas are made: ~0.3-1 s each
    client = APIClient(REMOTE_ADDR=ip)
    assert [client.get(path).status_code for path in ("/api/docs/", "/api/schema/")] == [200, 200]
    limited = client.get("/api/schema/?format=json")  # the error in the schema's own format
    assert_limited(limited, f"ip:{ip}")
    assert json.loads(limited.content)["error"]["code"] == "throttled"


def test_readiness_probe_is_never_limited(client, limits):
    limits(anon=1)
    assert all(client.get("/api/v1/system/health/").status_code == 200 for _ in range(3))


def test_limit_holds_across_two_web_processes(web_process, django_user_model):
    carol = django_user_model.objects.create_user("carol", password=PASSWORD)
    env = {"RATE_LIMIT_STANDARD": "4"}
    one, two = web_process("rl1", **env), web_process("rl2", **env)
    token = httpx.post(f"{one.url}/api/v1/auth/token/", json={"username": "carol", "password": PASSWORD}).json()
    headers = {"Authorization": f"Bearer {token['access']}"}
    clear_of_window_edge(f"user:{carol.pk}", margin=10)  # the six requests below (over HTTP) fall in one window

    codes = [httpx.post(f"{web.url}/api/v1/tasks/", json=SUBMIT, headers=headers).status_code
             for web in (one, two, one, two)]
    assert codes == [201, 201, 201, 201]
    for web in (one, two):
        response = httpx.post(f"{web.url}/api/v1/tasks/", json=SUBMIT, headers=headers)
        assert_limited(response, f"user:{carol.pk}")
