"""A web process keeps one Redis connection pool for Django's cache (config/redis_pool.py): under ASGI
every request got a cache object, a pool and a connection of its own (200 GETs opened 222 connections)."""
from __future__ import annotations

import httpx
import redis
from django.conf import settings

from tests.conftest import PASSWORD


def connections_received() -> int:
    return int(redis.Redis.from_url(settings.REDIS_URL).info("stats")["total_connections_received"])


def test_requests_to_daphne_reuse_the_caches_redis_connections(live_web, alice):
    token = httpx.post(f"{live_web}/api/v1/auth/token/", json={"username": "alice", "password": PASSWORD}).json()
    auth = {"Authorization": f"Bearer {token['access']}"}
    with httpx.Client(base_url=live_web, headers=auth) as client:
        assert client.get("/api/v1/tasks/").status_code == 200  # the pool made, its first connection opened
        before = connections_received()
        for _ in range(60):
            assert client.get("/api/v1/tasks/").status_code == 200  # each one through the rate limiter
        opened = connections_received() - before

    # Every process on this Redis counts (the session's worker, its beat): a few, not one per request.
    assert opened < 20, opened
