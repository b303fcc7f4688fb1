"""Security defaults: DEBUG off, SECRET_KEY required, TLS hardening behind SECURE_SSL, CORS allow-list,
admin behind staff login."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _settings(**env: str) -> subprocess.CompletedProcess[str]:
    """Import config.settings in a fresh interpreter with exactly these variables (plus PATH)."""
    base = {"PATH": os.environ["PATH"], "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x"}
    code = ("import json, config.settings as s; print(json.dumps({k: getattr(s, k, None) for k in "
            "['DEBUG','SESSION_COOKIE_SECURE','CSRF_COOKIE_SECURE','SECURE_HSTS_SECONDS','SECURE_SSL_REDIRECT',"
            "'SECURE_PROXY_SSL_HEADER','CORS_ALLOWED_ORIGINS']}))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True)


def test_secret_key_is_required_outside_make_run():
    out = _settings()
    assert out.returncode != 0
    assert "environment variable SECRET_KEY is required" in out.stderr


def test_make_run_gets_a_throwaway_key_and_debug_stays_off():
    import json

    out = _settings(CONVEYOR_DEV="1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["DEBUG"] is False


def test_plain_http_defaults_have_no_secure_cookies_or_hsts():
    import json

    values = json.loads(_settings(SECRET_KEY="x" * 50).stdout)
    assert values["SESSION_COOKIE_SECURE"] is False and values["SECURE_HSTS_SECONDS"] == 0
    assert values["CORS_ALLOWED_ORIGINS"] == []


def test_secure_ssl_turns_on_secure_cookies_hsts_redirect_and_proxy_header():
    import json

    values = json.loads(_settings(SECRET_KEY="x" * 50, SECURE_SSL="true",
                                  CORS_ALLOWED_ORIGINS="https://a.example, https://b.example").stdout)
    assert values["SESSION_COOKIE_SECURE"] and values["CSRF_COOKIE_SECURE"]
    assert values["SECURE_HSTS_SECONDS"] == 31536000
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["CORS_ALLOWED_ORIGINS"] == ["https://a.example", "https://b.example"]


def test_bad_boolean_fails_loudly():
    out = _settings(SECRET_KEY="x" * 50, SECURE_SSL="maybe")
    assert out.returncode != 0 and "SECURE_SSL='maybe' is not a boolean" in out.stderr


@pytest.mark.django_db
def test_https_request_gets_hsts_and_probes_are_not_redirected(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    assert client.get("/api/v1/algorithms/").status_code == 301  # plain HTTP → https
    assert client.get("/health/").status_code == 200
    assert client.get("/api/v1/system/health/").status_code == 200
    secure = client.get("/health/", secure=True)
    assert secure.headers["Strict-Transport-Security"] == "max-age=3600"


@pytest.mark.django_db
def test_cors_allows_only_listed_origins(client, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://dash.example"]
    allowed = client.options("/api/v1/tasks/", HTTP_ORIGIN="https://dash.example",
                             HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    other = client.options("/api/v1/tasks/", HTTP_ORIGIN="https://evil.example",
                           HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert "Access-Control-Allow-Origin" not in other.headers


@pytest.mark.django_db
def test_admin_needs_a_staff_login(client, alice):
    assert client.get("/admin/").status_code == 302
    client.force_login(alice)  # a plain user is not staff
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
