"""One Redis connection pool per process for Django's cache (rate limits, readiness' cache).

Django's ``RedisCache`` keeps a pool per cache object, and under ASGI ``caches["default"]`` is a new object
in every request's context, so every request that touched the cache (each one, through the rate limiter)
built a pool and opened a connection of its own, closed only when the garbage collector got to it: 200
GETs to daphne opened 222 connections to Redis. ``SharedConnectionPool.from_url`` hands every cache object
of the process the same pool for the same URL and options (redis-py renews a pool's connections after a
fork by itself)."""
from __future__ import annotations

import threading
from typing import Any

import redis


class SharedConnectionPool(redis.ConnectionPool):
    _shared: dict[tuple[str, frozenset[tuple[str, Any]]], redis.ConnectionPool] = {}
    _lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.ConnectionPool:  # type: ignore[override]
        key = (url, frozenset(kwargs.items()))
        with cls._lock:
            pool = cls._shared.get(key)
            if pool is None:
                pool = cls._shared[key] = super().from_url(url, **kwargs)
            return pool
