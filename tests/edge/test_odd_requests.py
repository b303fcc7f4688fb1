"""Odd requests a fuzzer sent, each answered in the API's JSON error shape with a 4xx (or a 503) instead
of a 500, an HTML page or a YAML body: other methods on the read-only pages (an OPTIONS on Swagger's page
was a 500), a write outside the API without a CSRF token, a NUL in an algorithm's name, more query
parameters than Django parses. And logins while the rate-limit store is down: refused (503), not
unlimited, while every other call is served."""
from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    return response.json()["error"]


@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/", "/api/schema/", "/health/"])
def test_read_only_pages_answer_other_methods_with_a_json_405(path):
    client = Client()
    assert client.get(path).status_code == 200
    for method in ("options", "post", "put", "delete"):
        error = error_of(getattr(client, method)(path), 405)
        assert error["code"] == "method_not_allowed" and method.upper() in error["message"]


@pytest.mark.parametrize("path", ["/metrics", "/dashboard/"])
def test_a_write_without_a_csrf_token_outside_the_api_is_a_json_403(path):
    error = error_of(Client(enforce_csrf_checks=True).post(path), 403)
    assert "CSRF" in error["message"]


def test_the_admin_keeps_djangos_csrf_page():
    response = Client(enforce_csrf_checks=True).post("/admin/login/", {"username": "x", "password": "y"})
    assert response.status_code == 403 and response["Content-Type"].startswith("text/html")


def test_a_nul_in_an_algorithm_name_is_a_400_naming_the_id(api, alice):
    error = error_of(api(alice).get("/api/v1/algorithms/a%00b/"), 400)
    assert error["fields"] == {"id": ["must not contain NUL characters"]}


def test_more_query_parameters_than_django_parses_is_a_400_saying_so(api, alice, settings):
    query = "&".join(f"p{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    error = error_of(api(alice).get(f"/api/v1/tasks/?{query}"), 400)
    assert "DATA_UPLOAD_MAX_NUMBER_FIELDS" in error["message"]


def test_logins_are_refused_not_unlimited_while_the_rate_limit_store_is_down(api, alice, settings):
    client = api(alice)  # logged in while Redis answers
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:1/0"}}  # nothing listens there
    login = Client().post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD},
                          content_type="application/json")
    assert error_of(login, 503)["code"] == "unavailable" and login["Retry-After"] == "5"
    admin_login = Client().post("/admin/login/", {"username": "alice", "password": PASSWORD})
    assert error_of(admin_login, 503)["code"] == "unavailable"
    assert client.get("/api/v1/tasks/").status_code == 200  # everything else is served meanwhile
    assert client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}).status_code == 201


def test_format_is_no_api_parameter_but_still_picks_the_schemas_encoding(api, alice):
    client = api(alice)
    listed = client.get("/api/v1/tasks/?format=xml")  # was a 404 "not found": DRF's format override
    assert listed.status_code == 200 and listed["Content-Type"].startswith("application/json")
    as_json = Client().get("/api/schema/?format=json")
    assert as_json.status_code == 200 and as_json.json()["openapi"].startswith("3.")
    as_yaml = Client().get("/api/schema/?format=yaml")
    assert as_yaml.status_code == 200 and as_yaml.content.startswith(b"openapi:")
