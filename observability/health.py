"""Readiness: can this process serve requests right now? (``/health/`` is liveness: the process answers.)

Each check returns ``{"ok": bool, ...}`` and never raises; the database, Redis (cache and channel layer)
and the broker are required, so one of them failing makes the answer 503. Workers are reported but not
required: a web process can accept tasks while no worker runs (they wait in PostgreSQL), and a readiness
probe that failed for that would take every web pod out of the load balancer at once.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import connections

REQUIRED = ("database", "redis", "broker")


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        out = {"ok": True, **check()}
    except Exception as exc:  # a readiness probe reports failures, it does not raise them
        out = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'failed'}"}
    out["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return out


def check_database() -> dict[str, Any]:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {}


def check_redis() -> dict[str, Any]:
    timeout = settings.HEALTH_CHECK_TIMEOUT
    for url in {settings.REDIS_URL, settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]}:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    return {}


def check_broker() -> dict[str, Any]:
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.HEALTH_CHECK_TIMEOUT)
        return {"transport": conn.transport.driver_type}


def check_workers() -> dict[str, Any]:
    from config.celery import app

    replies = app.control.ping(timeout=settings.HEALTH_WORKER_PING_TIMEOUT) or []
    names = sorted(name for reply in replies for name in reply)
    if not names:  # reported, not required for readiness: but not "ok" either
        return {"ok": False, "count": 0, "names": [], "error": "no worker answered the ping"}
    return {"count": len(names), "names": names}


def check_remote_services() -> dict[str, Any]:
    from algorithms.remote.discovery import health_report

    return health_report()


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": check_database,
    "redis": check_redis,
    "broker": check_broker,
    "workers": check_workers,
    # Remote algorithm services (reported, not required): their last health check, from the database.
    "remote_services": check_remote_services,
}


def readiness() -> tuple[bool, dict[str, dict[str, Any]]]:
    """Run every check; ready when all required ones pass. Workers are not pinged through a broker
    that is down (the ping would only wait out its timeout)."""
    results: dict[str, dict[str, Any]] = {}
    for name, check in CHECKS.items():
        if name == "workers" and not results["broker"]["ok"]:
            results[name] = {"ok": False, "error": "skipped: broker unreachable", "count": 0}
            continue
        results[name] = _timed(check)
    return all(results[name]["ok"] for name in REQUIRED), results
