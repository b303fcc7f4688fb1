"""Readiness: can this process serve requests right now? (``/health/`` is liveness: the process answers.)

Each check returns ``{"ok": bool, ...}`` and never raises; the database, Redis (cache and channel layer)
and the broker are required, so one of them failing makes the answer 503. Workers are reported but not
required: a web process can accept tasks while no worker runs (they wait in PostgreSQL), and a readiness
probe that failed for that would take every web pod out of the load balancer at once. So is the
reconciler (beat's ``queueing.reconcile``, which re-sends lost broker messages and re-runs dead workers'
tasks): not ok when its last completed pass is older than a few of its intervals, or none is recorded.

Every dependency gets ``HEALTH_CHECK_TIMEOUT`` seconds. The three required checks run at once, each in a
daemon thread of its own, and the probe waits for them at most that long: one that has not answered by
then fails with ``TimeoutError: no answer within …``. Each check also sets that timeout on its own
sockets (connect and read, no retries), so a dependency that accepts connections and never answers ends
the check's thread by itself soon after instead of leaving it, and its socket, blocked for ever. Checks
that need a dependency which failed are skipped, not run: workers are not pinged through a broker that
is down, remote services (stored in the database) are not read from a database that is down, the
reconciler's last pass (stamped in Redis) is not read from a Redis that is down.

A web process that got SIGTERM and is draining its requests in flight (``config.handlers``) is not ready
whatever its dependencies say: ``shutting_down`` is set, and the endpoint answers 503 so that load
balancers stop sending it new requests while the ones in flight finish.
"""
from __future__ import annotations

import math
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import connections
from redis.backoff import NoBackoff
from redis.retry import Retry

REQUIRED = ("database", "redis", "broker")
# Checks run only when the check they need passed, and what they report otherwise.
NEEDS = {"workers": "broker", "remote_services": "database", "reconciler": "redis"}
# Set once, on the first SIGTERM under daphne (config.handlers.drain_on_sigterm); never cleared.
shutting_down = threading.Event()
SKIPPED = {
    "workers": {"ok": False, "error": "skipped: broker unreachable", "count": 0},
    "remote_services": {"ok": False, "error": "skipped: database unreachable"},
    "reconciler": {"ok": False, "error": "skipped: redis unreachable", "last_run_seconds_ago": None},
}
RECONCILER_HINT = "is celery beat running, and a worker consuming the default queue?"


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'failed'}"


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        out = {"ok": True, **check()}
    except Exception as exc:  # a readiness probe reports failures, it does not raise them
        out = {"ok": False, "error": _error(exc)}
    out["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return out


def _bounded(checks: dict[str, Callable[[], dict[str, Any]]], timeout: float) -> dict[str, dict[str, Any]]:
    """Run ``checks`` at once, each in a daemon thread, and wait at most ``timeout`` seconds for them all.
    A check still running then fails; its thread ends on its own sockets' timeouts."""
    done: dict[str, dict[str, Any]] = {}
    threads = []
    for name, check in checks.items():
        def run(name: str = name, check: Callable[[], dict[str, Any]] = check) -> None:
            done[name] = _timed(check)
        thread = threading.Thread(target=run, name=f"conveyor-health-{name}", daemon=True)
        thread.start()
        threads.append((name, thread))
    deadline = time.monotonic() + timeout
    for _, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = {"ok": False, "error": f"TimeoutError: no answer within {timeout:g}s",
            "latency_ms": round(timeout * 1000, 1)}
    return {name: done.get(name) or dict(late) for name, _ in threads}


def _wait_socket(fd: int, writing: bool, deadline: float, timeout: float) -> None:
    poller = select.poll()  # not select(): a busy web process may hold file descriptors past 1024
    poller.register(fd, select.POLLOUT if writing else select.POLLIN)
    if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
        raise TimeoutError(f"no answer within {timeout:g}s")


def check_database() -> dict[str, Any]:
    """``SELECT 1`` on a connection of its own (the request's may be pooled or persistent, and waits
    ``DB_CONNECT_TIMEOUT`` to connect), driven by hand through libpq's non-blocking calls so that
    ``HEALTH_CHECK_TIMEOUT`` bounds the connect and the query together, and the socket is closed as
    soon as the check ends, answered or not (``psycopg.connect``'s timeout leaves it to the GC)."""
    from psycopg import OperationalError, pq
    from psycopg.conninfo import make_conninfo

    timeout = settings.HEALTH_CHECK_TIMEOUT
    deadline = time.monotonic() + timeout
    params = connections["default"].get_connection_params()
    for python_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(python_only, None)
    params["options"] = " ".join(filter(None, [params.get("options"),
                                               f"-c statement_timeout={math.ceil(timeout * 1000)}"]))
    pgconn = pq.PGconn.connect_start(make_conninfo("", **params).encode())
    try:
        while (status := pgconn.connect_poll()) != pq.PollingStatus.OK:
            if status == pq.PollingStatus.FAILED:
                raise OperationalError(pgconn.get_error_message())
            _wait_socket(pgconn.socket, status == pq.PollingStatus.WRITING, deadline, timeout)
        pgconn.nonblocking = 1
        pgconn.send_query(b"SELECT 1")
        while pgconn.flush():
            _wait_socket(pgconn.socket, True, deadline, timeout)
        while True:
            pgconn.consume_input()
            if pgconn.is_busy():
                _wait_socket(pgconn.socket, False, deadline, timeout)
                continue
            result = pgconn.get_result()
            if result is None:
                break
            if result.status != pq.ExecStatus.TUPLES_OK:
                raise OperationalError(result.get_error_message())
    finally:
        pgconn.finish()
    return {}


def check_redis() -> dict[str, Any]:
    timeout = settings.HEALTH_CHECK_TIMEOUT
    for url in {settings.REDIS_URL, settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]}:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                      retry=Retry(NoBackoff(), 0))
        try:
            # A write, not a PING: a Redis at its maxmemory (noeviction) or refusing writes after a failed
            # save still answers PING, while every send, rate limit and channel message fails.
            client.set(PROBE_KEY, "1", ex=10)
        finally:
            client.close()
    return {}


PROBE_KEY = "conveyor:health:probe"


def broker_connection(**options: Any) -> Any:
    """A new broker connection (not the producer pool's) whose sockets time out: Redis (kombu's
    ``socket_*`` transport options) and AMQP (``connect_timeout``, py-amqp's ``read/write_timeout``).
    Celery's ``broker_connection_timeout`` would win over a ``connect_timeout`` given to
    ``connection_for_write``, hence the clone."""
    from config.celery import app

    timeout = settings.HEALTH_CHECK_TIMEOUT
    options = {"socket_connect_timeout": timeout, "socket_timeout": timeout,
               "read_timeout": timeout, "write_timeout": timeout, **options}
    return app.connection_for_write(transport_options=options).clone(connect_timeout=timeout)


def check_broker() -> dict[str, Any]:
    with broker_connection() as conn:
        conn.ensure_connection(max_retries=0, timeout=settings.HEALTH_CHECK_TIMEOUT)  # one attempt, no retry
        return {"transport": conn.transport.driver_type}


def check_workers() -> dict[str, Any]:
    from config.celery import app

    # Redis: short BRPOPs for the replies, or closing the connection waits out the 1 s one in flight.
    with broker_connection(polling_interval=0.05) as conn:
        replies = app.control.ping(timeout=settings.HEALTH_WORKER_PING_TIMEOUT, connection=conn) or []
    names = sorted(name for reply in replies for name in reply)
    if not names:  # reported, not required for readiness: but not "ok" either
        return {"ok": False, "count": 0, "names": [], "error": "no worker answered the ping"}
    return {"count": len(names), "names": names}


def check_remote_services() -> dict[str, Any]:
    from algorithms.remote.discovery import health_report

    return health_report()


def check_reconciler() -> dict[str, Any]:
    """Reported, not required: with beat down nothing recovers lost messages or dead workers' tasks, but
    this web process serves requests all the same. Its stamp is read by Redis' clock (queueing.reconciler)."""
    from queueing import reconciler

    age, limit = reconciler.last_pass_age(), reconciler.stale_after()
    if age is None:
        return {"ok": False, "last_run_seconds_ago": None,
                "error": f"no reconciler pass recorded: {RECONCILER_HINT}"}
    out = {"last_run_seconds_ago": round(age, 1)}
    if age > limit:
        out.update(ok=False, error=f"last reconciler pass {age:.0f}s ago (more than {limit:g}s): {RECONCILER_HINT}")
    return out


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": check_database,
    "redis": check_redis,
    "broker": check_broker,
    "workers": check_workers,
    # Remote algorithm services (reported, not required): their last health check, from the database.
    "remote_services": check_remote_services,
    # Lost QUEUED messages and dead workers' tasks are recovered only by beat's reconcile (reported, not required).
    "reconciler": check_reconciler,
}


_shared_lock = threading.Lock()
_shared: tuple[float, tuple[bool, dict[str, dict[str, Any]]]] | None = None


def shared_readiness() -> tuple[bool, dict[str, dict[str, Any]]]:
    """``readiness()`` at most once per ``HEALTH_CACHE_SECONDS`` in this process. The endpoint answers anyone,
    unlimited (probes), and each check opens connections of its own (the database's, Redis', the broker's)
    and pings every worker: a flood of anonymous calls opened as many database connections. Callers that
    come during a check wait for it and share its answer."""
    global _shared
    max_age = settings.HEALTH_CACHE_SECONDS
    if max_age <= 0:
        return readiness()
    with _shared_lock:
        if _shared is None or time.monotonic() - _shared[0] >= max_age:
            answer = readiness()
            _shared = (time.monotonic(), answer)
        return _shared[1]


def readiness() -> tuple[bool, dict[str, dict[str, Any]]]:
    """Run every check; ready when all required ones pass. The required ones run at once, each bounded by
    ``HEALTH_CHECK_TIMEOUT``; then the workers' ping (bounded by that plus the ping's own timeout) and
    the remote services and the reconciler's last pass, read in this thread (the request's database
    connection; Redis, with ``HEALTH_CHECK_TIMEOUT`` on its sockets), each only when what it needs passed."""
    timeout = settings.HEALTH_CHECK_TIMEOUT
    results = _bounded({name: CHECKS[name] for name in REQUIRED}, timeout)
    for name, needed in NEEDS.items():
        if not results[needed]["ok"]:
            results[name] = dict(SKIPPED[name])
        elif name == "workers":
            results.update(_bounded({name: CHECKS[name]}, timeout + settings.HEALTH_WORKER_PING_TIMEOUT))
        else:
            results[name] = _timed(CHECKS[name])
    return all(results[name]["ok"] for name in REQUIRED), {name: results[name] for name in CHECKS}
