"""Probes and scrapes name the pod, not the site (``Host: 10.1.2.3:8000``): with ALLOWED_HOSTS set to the
real domain they still get their 200 (observability.probes), and every other path still gets the 400."""
from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db

SITE = "conveyor.example.com"
POD = "10.1.2.3:8000"  # what kubelet and Prometheus send
CONTAINER = "127.0.0.1:8000"  # what the image's and compose's health checks send


def fresh_client() -> Client:
    """A client whose middleware is built now, under the overridden settings (SecurityMiddleware reads
    SECURE_SSL_REDIRECT when it is made)."""
    return Client()


def test_the_probe_paths_are_the_ones_the_urls_serve():
    from django.urls import resolve

    assert set(settings.PROBE_PATHS) == {"/health/", "/api/v1/system/health/", "/metrics"}
    for path in settings.PROBE_PATHS:
        resolve(path)
    assert settings.MIDDLEWARE[0] == "observability.probes.ProbeHostMiddleware"


@pytest.mark.parametrize("host", [POD, CONTAINER, "[fd00::1]:8000", "10.1.2.3"])
@pytest.mark.parametrize("path", ["/health/", "/api/v1/system/health/", "/metrics"])
@override_settings(ALLOWED_HOSTS=[SITE])
def test_probes_and_scrapes_answer_whatever_host_they_name(path, host):
    client = fresh_client()
    response = client.get(path, HTTP_HOST=host)
    assert response.status_code == 200, (path, host, response.content[:300])
    assert client.head(path, HTTP_HOST=host).status_code == 200


@override_settings(ALLOWED_HOSTS=[SITE])
@pytest.mark.parametrize(("method", "path"), [
    ("get", "/api/v1/tasks/"),
    ("get", "/api/v1/auth/token/"),
    ("post", "/api/v1/auth/token/"),
    ("get", "/admin/login/"),
    ("get", "/dashboard/"),
    ("get", "/health"),  # the slash redirect would name the host
    ("get", "/metrics/"),
    ("get", "/health/x"),
    ("get", "/api/v1/system/health/extra/"),
    ("post", "/metrics"),  # only GET and HEAD
    ("post", "/health/"),
    ("put", "/api/v1/system/health/"),
])
def test_every_other_request_keeps_the_allowed_hosts_check(method, path):
    response = getattr(fresh_client(), method)(path, HTTP_HOST=POD)
    assert response.status_code == 400, (method, path, response.status_code)


@override_settings(ALLOWED_HOSTS=[SITE])
def test_a_malformed_host_is_still_a_400_on_the_probe_paths():
    for host in ("bad host", "a@b", "10.1.2.3:80:80", "exa mple.com"):
        assert fresh_client().get("/health/", HTTP_HOST=host).status_code == 400, host


@override_settings(ALLOWED_HOSTS=[SITE])
def test_the_site_itself_is_unaffected():
    client = fresh_client()
    assert client.get("/health/", HTTP_HOST=SITE).status_code == 200
    assert client.get("/api/v1/tasks/", HTTP_HOST=SITE).status_code == 401  # reached the API: no credentials


@override_settings(ALLOWED_HOSTS=[SITE], SECURE_SSL_REDIRECT=True)
def test_behind_tls_probes_are_neither_redirected_nor_refused_and_the_rest_still_is():
    client = fresh_client()
    for path in settings.PROBE_PATHS:
        assert client.get(path, HTTP_HOST=POD).status_code == 200, path
    # The redirect to https:// names the host: a foreign one is refused, the site's is redirected.
    assert client.get("/api/v1/tasks/", HTTP_HOST=POD).status_code == 400
    response = client.get("/api/v1/tasks/", HTTP_HOST=SITE)
    assert response.status_code == 301 and response["Location"] == f"https://{SITE}/api/v1/tasks/"
