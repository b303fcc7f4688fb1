"""Security defaults: DEBUG off, SECRET_KEY required (a local stack's is random, kept per data folder),
TLS hardening behind SECURE_SSL, CORS allow-list, admin behind staff login."""
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


def test_make_run_gets_a_key_and_debug_stays_off(tmp_path):
    import json

    out = _settings(CONVEYOR_DEV="1", CONVEYOR_DATA_DIR=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["DEBUG"] is False


# What config.settings used as SECRET_KEY for make run and DEBUG until it was replaced: published in the source,
# so anyone could sign an admin's JWT for a dev instance with it.
FORMER_DEV_KEY = "insecure-dev-key-only-for-make-run"

_CHECK_TOKENS = f"""
import json, time, django, jwt
django.setup()
from django.conf import settings
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken
claims = {{"token_type": "access", "exp": int(time.time()) + 600, "iat": int(time.time()), "jti": "j", "user_id": "1"}}
def accepted(key):
    try:
        AccessToken(jwt.encode(claims, key, algorithm="HS256"))
        return True
    except TokenError:
        return False
print(json.dumps({{"key": settings.SECRET_KEY, "own": accepted(settings.SECRET_KEY), "former": accepted({FORMER_DEV_KEY!r})}}))
"""


def _dev_instance(data_dir, **env: str) -> dict:
    """A dev instance's settings in a fresh interpreter: its key, and whether it accepts an admin's token
    signed with its own key and with the former published one."""
    import json

    out = subprocess.run([sys.executable, "-c", _CHECK_TOKENS], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x",
                              "DJANGO_SETTINGS_MODULE": "config.settings", "CONVEYOR_DATA_DIR": str(data_dir), **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_dev_instance_refuses_a_token_signed_with_the_former_published_key(tmp_path):
    # given: make run's processes (CONVEYOR_DEV) on a fresh data folder
    make_run = _dev_instance(tmp_path / "data", CONVEYOR_DEV="1")

    # then: they sign with a random key kept in that folder, accept their own tokens and refuse forged ones
    kept = (tmp_path / "data" / "secret_key").read_text().strip()
    assert make_run["key"] == kept and len(kept) >= 50
    assert make_run["own"] and not make_run["former"]

    # and: `DEBUG=1 make web` on the same folder (no SECRET_KEY, no make run) uses that same key
    debug_web = subprocess.run([sys.executable, "-c", "import config.settings as s; print(s.SECRET_KEY)"], cwd=ROOT,
                               env={"PATH": os.environ["PATH"], "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x",
                                    "DEBUG": "1", "CONVEYOR_DATA_DIR": str(tmp_path / "data")},
                               capture_output=True, text=True)
    assert debug_web.returncode == 0, debug_web.stderr
    assert debug_web.stdout.strip() == kept


def test_the_dev_key_is_random_per_data_folder_kept_across_restarts_and_private(tmp_path):
    from config.devkey import dev_secret_key

    first, second = dev_secret_key(tmp_path / "a"), dev_secret_key(tmp_path / "b")
    assert first != second
    assert dev_secret_key(tmp_path / "a") == first  # a restart: same key, logins survive
    assert (tmp_path / "a" / "secret_key").stat().st_mode & 0o777 == 0o600


def test_processes_starting_at_once_on_a_new_data_folder_agree_on_one_key(tmp_path):
    import threading

    from config.devkey import dev_secret_key

    start, keys = threading.Barrier(8), []

    def starting() -> None:
        start.wait()
        keys.append(dev_secret_key(tmp_path))

    threads = [threading.Thread(target=starting) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no partial files left behind


def test_a_dev_key_that_cannot_be_made_stops_the_process_naming_secret_key(tmp_path):
    (tmp_path / "file").write_text("")
    out = _settings(CONVEYOR_DEV="1", CONVEYOR_DATA_DIR=str(tmp_path / "file" / "data"))
    assert out.returncode != 0
    assert "SECRET_KEY is not set" in out.stderr and "CONVEYOR_DATA_DIR" in out.stderr


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
