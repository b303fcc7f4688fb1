"""Readiness with a dependency that accepts connections and never answers (a hung broker or database, a
half-open connection through a NAT): each check ends within ``HEALTH_CHECK_TIMEOUT``, the probe answers
503 naming it, the checks that need it are skipped, and no thread or socket is left waiting for ever."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.conftest import wait_until

TIMEOUT = 1.0  # HEALTH_CHECK_TIMEOUT for these tests
# A behaviour check, not a benchmark. A bounded probe answers after about TIMEOUT (plus the 0.5 s worker
# ping when the broker answers) and the HTTP round trip to daphne, which a busy machine can stretch by
# seconds; one that waits on the hung dependency answers after its own timeout (DB_CONNECT_TIMEOUT below,
# 30 s) or never. BOUND lies well between the two.
BOUND = 10.0
HUNG_CONNECT_TIMEOUT = 30  # DB_CONNECT_TIMEOUT of the web process whose database hangs: 3 × BOUND


class SilentListener:
    """A TCP listener on loopback that accepts every connection and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, name="silent-listener", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def still_open(self) -> int:
        """How many accepted connections their client has not closed yet."""
        count = 0
        for conn in list(self.accepted):
            try:
                while conn.recv(65536, socket.MSG_DONTWAIT):  # what the client sent, unread: drop it
                    pass
            except BlockingIOError:
                count += 1  # nothing more to read, and no end of stream: still open
            except OSError:
                pass  # reset: closed
        return count

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent():
    listener = SilentListener()
    yield listener
    listener.close()


def probe(url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(f"{url}/api/v1/system/health/", timeout=10 * BOUND)
    return response, time.monotonic() - started


@pytest.mark.parametrize("scheme", ["redis://127.0.0.1:{port}/0", "amqp://guest:guest@127.0.0.1:{port}//"])
def test_a_broker_that_never_answers_makes_readiness_503_within_the_timeout(web_process, silent, scheme):
    web = web_process("brokerhang", CELERY_BROKER_URL=scheme.format(port=silent.port),
                      HEALTH_CHECK_TIMEOUT=str(TIMEOUT))

    for _ in range(2):  # a probe every period: none of them piles up
        response, elapsed = probe(web.url)
        assert response.status_code == 503, response.text
        assert elapsed < BOUND, elapsed
        body = response.json()
        assert body["error"]["message"].startswith("broker: ")
        assert body["checks"]["broker"]["ok"] is False
        assert body["checks"]["database"]["ok"] is True and body["checks"]["redis"]["ok"] is True
        assert body["checks"]["workers"] == {"ok": False, "error": "skipped: broker unreachable", "count": 0}
    assert silent.accepted
    # The checks' own socket timeouts end them: every connection to the hung broker is closed again.
    wait_until(lambda: silent.still_open() == 0, timeout=5 * TIMEOUT, message="the probe's broker sockets closed")
    assert httpx.get(f"{web.url}/health/").status_code == 200


def test_a_database_that_never_answers_makes_readiness_503_within_the_timeout_and_is_asked_once(web_process,
                                                                                                silent):
    """``HEALTH_CHECK_TIMEOUT``, not ``DB_CONNECT_TIMEOUT`` (30 s here), bounds the database check, and the
    remote services (read from the database) are skipped instead of waiting on the same database again."""
    web = web_process("dbhang", DATABASE_URL=f"postgres://postgres@127.0.0.1:{silent.port}/conveyor",
                      HEALTH_CHECK_TIMEOUT=str(TIMEOUT), DB_CONNECT_TIMEOUT=str(HUNG_CONNECT_TIMEOUT))

    response, elapsed = probe(web.url)

    assert response.status_code == 503, response.text
    assert elapsed < BOUND, elapsed
    body = response.json()
    assert body["status"] == "unavailable" and body["error"]["message"].startswith("database: ")
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["redis"]["ok"] is True and body["checks"]["broker"]["ok"] is True
    assert body["checks"]["remote_services"] == {"ok": False, "error": "skipped: database unreachable"}
    assert len(silent.accepted) == 1  # one connection: the database check's, not a second one
    wait_until(lambda: silent.still_open() == 0, timeout=5 * TIMEOUT, message="the database check's socket closed")


@pytest.mark.django_db
def test_no_check_thread_outlives_its_timeouts(silent, settings, monkeypatch):
    """In process: every dependency hung at once. The probe answers within the bound, then each check's
    thread ends on its own (no thread blocked for ever per probe) and closes its socket."""
    from django.db import connection

    from observability import health

    url = f"redis://127.0.0.1:{silent.port}/0"
    settings.HEALTH_CHECK_TIMEOUT = TIMEOUT
    settings.REDIS_URL = url
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # celery reads it before its configuration
    with monkeypatch.context() as patch:
        patch.setitem(connection.settings_dict, "PORT", str(silent.port))  # the check's own connection only
        outcome: list = []
        caller = threading.Thread(target=lambda: outcome.append(health.readiness()), daemon=True)
        started = time.monotonic()
        caller.start()
        caller.join(10 * BOUND)
        elapsed = time.monotonic() - started
        assert outcome, "readiness did not answer"
        ready, checks = outcome[0]
        assert not ready and elapsed < BOUND, elapsed
        assert all(checks[name]["ok"] is False for name in ("database", "redis", "broker")), checks
        assert checks["workers"]["error"] == "skipped: broker unreachable"
        assert checks["remote_services"]["error"] == "skipped: database unreachable"

        # libpq's connect timeout is 2 s at least: the database check's thread is the last to end.
        wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("conveyor-health-")],
                   timeout=5 * max(2.0, TIMEOUT), message="the check threads ended")
    assert len(silent.accepted) >= 3  # the database, Redis and the broker all connected to it
    wait_until(lambda: silent.still_open() == 0, timeout=5 * TIMEOUT, message="every check's socket closed")
