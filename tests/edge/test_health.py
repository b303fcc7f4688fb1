"""Readiness reports every dependency and turns 503, with a clear error, when PostgreSQL is down."""
from __future__ import annotations

import httpx
import pytest
from django.conf import settings

from tests.conftest import wait_until
from tests.edge.conftest import closed_port

pytestmark = pytest.mark.django_db


def test_liveness_answers_without_touching_dependencies(anon):
    response = anon.get("/health/")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_is_open_to_probes_and_lists_each_dependency(anon):
    response = anon.get("/api/v1/system/health/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert {"database", "redis", "broker", "workers"} <= set(body["checks"])
    for name in ("database", "redis", "broker"):
        assert body["checks"][name]["ok"] is True
    assert body["checks"]["broker"]["transport"] == settings.CELERY_BROKER_URL.split("://")[0].split("+")[0]
    assert isinstance(body["checks"]["workers"]["count"], int)


def test_readiness_counts_a_live_worker(live_worker, anon, settings):
    """The worker answers the ping from its main process, which a busy machine may keep from replying
    within the default 0.5 s: a longer ping, and probes until one counts it (what a probe polling it
    sees), rather than one short ping."""
    settings.HEALTH_WORKER_PING_TIMEOUT = 2.0

    def counted() -> dict | None:
        workers = anon.get("/api/v1/system/health/").json()["checks"]["workers"]
        return workers if workers.get("count", 0) >= 1 else None

    workers = wait_until(counted, timeout=60, interval=0.2, message="a readiness probe counting the live worker")
    assert workers["ok"] is True and workers["names"]


def test_readiness_is_503_with_a_clear_error_when_postgresql_is_down(web_process):
    web = web_process("pgdown", DATABASE_URL=f"postgres://postgres@127.0.0.1:{closed_port()}/conveyor")

    response = httpx.get(f"{web.url}/api/v1/system/health/", timeout=30)

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["error"]["code"] == "not_ready"
    assert body["error"]["message"].startswith("database: OperationalError")
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["redis"]["ok"] is True
    assert response.headers["Retry-After"] == "5"
    # Liveness stays up: the process is fine, only a dependency is not.
    assert httpx.get(f"{web.url}/health/").status_code == 200


def test_readiness_is_503_when_redis_is_down(web_process):
    down = f"redis://127.0.0.1:{closed_port()}/0"
    web = web_process("redisdown", REDIS_URL=down, CELERY_BROKER_URL=down)  # the broker too, whatever the suite's
    body = httpx.get(f"{web.url}/api/v1/system/health/", timeout=30).json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["ok"] is False and body["checks"]["broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["workers"]["error"].startswith("skipped")


def test_readiness_with_no_worker_stays_ready_but_says_the_workers_check_is_not_ok(web_process):
    """Workers are reported, not required (the API still takes tasks), but ``ok`` must not claim them."""
    web = web_process("noworkers", CELERY_BROKER_URL="memory://")  # a broker no worker can read
    response = httpx.get(f"{web.url}/api/v1/system/health/", timeout=30)
    assert response.status_code == 200, response.text
    workers = response.json()["checks"]["workers"]
    assert workers["ok"] is False and workers["count"] == 0 and workers["error"] == "no worker answered the ping"



def test_readiness_checks_at_most_once_a_cache_period_however_many_call(anon, settings, monkeypatch):
    # Open to anyone and never limited, each call opened its own database, Redis and broker connections
    # and pinged every worker: a flood of calls opened as many connections.
    import threading

    from observability import health

    settings.HEALTH_CACHE_SECONDS = 60
    monkeypatch.setattr(health, "_shared", None)
    real, runs = health.readiness, []
    monkeypatch.setattr(health, "readiness", lambda: runs.append(1) or real())

    answers = [anon.get("/api/v1/system/health/") for _ in range(3)]
    threads = [threading.Thread(target=lambda: answers.append(anon.get("/api/v1/system/health/"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [a.status_code for a in answers] == [200] * 7 and len(runs) == 1
    monkeypatch.setattr(health, "_shared", (0.0, (True, {})))  # older than the period: checked again
    assert anon.get("/api/v1/system/health/").json()["checks"]["database"]["ok"] and len(runs) == 2


def test_readiness_is_503_when_redis_answers_ping_but_refuses_writes(anon, settings):
    """A Redis at its ``maxmemory`` with ``noeviction`` (where an unbounded queue ends) answers PING, but
    every broker send, rate limit and channel message fails: readiness must say so."""
    import redis

    from tests.chaos.stack import Redis

    server = Redis()
    server.start()
    try:
        redis.Redis.from_url(server.url).config_set("maxmemory", "1")  # far below what it uses already
        redis.Redis.from_url(server.url).config_set("maxmemory-policy", "noeviction")
        settings.REDIS_URL = server.url
        settings.CHANNEL_LAYERS = {"default": {**settings.CHANNEL_LAYERS["default"],
                                               "CONFIG": {**settings.CHANNEL_LAYERS["default"]["CONFIG"],
                                                          "hosts": [server.url]}}}
        response = anon.get("/api/v1/system/health/")
    finally:
        server.kill()

    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"].startswith("OutOfMemoryError"), body["checks"]["redis"]
