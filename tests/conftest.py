"""The cast and the moving parts every test tier shares.

* alice, bob: plain users; olga: an operator (``operators`` group). ``api(user)`` gives a DRF client
  holding a real JWT obtained from ``/api/v1/auth/token/``.
* live_worker: one real ``celery worker`` subprocess (prefork, with embedded beat for the reconciler)
  per test session, pointed at the pytest database; ``kill()``/``start()`` for fault tests.
* Services are required, not optional: if PostgreSQL or Redis is unreachable the session fails.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "correct horse battery staple"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail loudly (not skip) when a required service is down: ``make test`` starts them first."""
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        pytest.exit(f"Redis at {settings.REDIS_URL} is unreachable ({exc}); run `make services`", returncode=3)
    import psycopg

    db = settings.DATABASES["default"]
    try:
        psycopg.connect(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], password=db["PASSWORD"],
                        dbname="postgres", connect_timeout=3).close()
    except Exception as exc:
        pytest.exit(f"PostgreSQL at {db['HOST']}:{db['PORT']} is unreachable ({exc}); run `make services`",
                    returncode=3)


def wait_until(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail the test with ``message``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message} (last value: {value!r})")
        time.sleep(interval)


def unconsumed_queue() -> str:
    """The name of a queue no worker consumes: the session's worker (if one runs) never takes a task
    submitted there, nor its re-dispatch after a reaper or a pause; the test decides what it becomes."""
    from queueing.models import Queue

    return Queue.objects.get_or_create(name="unconsumed")[0].name


def queued_tasks(owner: Any, n: int, algorithm: str = "demo.noop", max_retries: int = 0) -> list[Any]:
    """``n`` QUEUED tasks of a queue no worker consumes (the session's worker may be running): what they
    become is up to the test. ``algorithm`` need not be registered when they are made."""
    from django.db import transaction
    from django.utils import timezone

    from jobs import events, services, transitions
    from jobs.models import Status, Task

    spec = services.build_spec(algorithm="demo.noop", queue=unconsumed_queue(), max_retries=max_retries)
    tasks = [services._new_task(owner, spec, None) for _ in range(n)]
    for task in tasks:
        task.algorithm = algorithm
    with transaction.atomic():
        Task.objects.bulk_create(tasks)
        events.record(tasks, "task.created")
        transitions.apply([t.id for t in tasks], frm=[Status.PENDING], to=Status.QUEUED, event="task.queued",
                          values={"queued_at": timezone.now()})
    return tasks


def another_session() -> Any:
    """A second PostgreSQL session (autocommit) on the test database, beside Django's connection: what
    another process's connection would do, step by step."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    return psycopg.connect(dbname=params["dbname"], user=params.get("user"), host=params.get("host"),
                           port=params.get("port"), password=params.get("password"), autocommit=True)


@contextlib.contextmanager
def row_held(task_id: Any) -> Iterator[None]:
    """Another session holds the task's row (``FOR NO KEY UPDATE``) in a transaction left open meanwhile,
    as a run's own transaction, a cancel or a finish would."""
    with another_session() as other, other.transaction():
        other.execute("SELECT 1 FROM jobs_task WHERE id = %s FOR NO KEY UPDATE", [str(task_id)])
        yield


def returns_without_waiting(fn: Callable[[], Any], timeout: float = 20.0) -> bool:
    """Run ``fn`` in a thread of its own (its own database connection, closed after): whether it returned
    within ``timeout`` (a generous bound: what it must not do is wait for a lock held meanwhile)."""
    from django.db import connection

    def run() -> None:
        try:
            fn()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def terminate_this_backend() -> None:
    """End the PostgreSQL backend of Django's connection in this thread, as a PostgreSQL restart would,
    and wait until it is gone: the connection's next statement fails."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    with another_session() as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
        wait_until(lambda: not other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone(),
                   message="the backend to end")


# --- database and broker hygiene --------------------------------------------------------------

@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """The pytest database, plus a broker DB with no messages left from an earlier session."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    yield
    _end_lingering_sessions(django_db_blocker)


def _end_lingering_sessions(django_db_blocker: Any) -> None:
    """Before the test database is dropped: say which sessions still hold it (a process a test did
    not stop), and end them, so that the drop does not fail with "being accessed by other users"."""
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cur:
        cur.execute("SELECT pid, client_port, state, left(query, 120) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        for pid, port, state, query in cur.fetchall():
            owner = subprocess.run(["ss", "-tnpH", f"sport = :{port}"], capture_output=True, text=True).stdout.strip()
            print(f"\nlingering session on the test database: backend {pid} ({state}: {query}); client {owner}",
                  file=sys.stderr)
            cur.execute("SELECT pg_terminate_backend(%s)", [pid])


def _flush_retrying_deadlocks(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """Transactional tests end by emptying the tables (tests/dbflush.py) while the session's live worker
    (and its beat) may be reading or writing a few of them: PostgreSQL can pick the flush as a deadlock
    victim. The flush runs in one transaction, so a victim loses nothing and is simply run again."""
    from django.core.management.base import CommandError
    from django.db import OperationalError

    def teardown(self: Any) -> None:
        for attempt in range(5):
            try:
                return original(self)
            except (CommandError, OperationalError) as exc:
                if "deadlock" not in str(exc.__cause__ or exc) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    return teardown


def pytest_configure(config: pytest.Config) -> None:
    from django.test import TransactionTestCase

    from tests.dbflush import quick_flush

    full_flush = TransactionTestCase._fixture_teardown
    TransactionTestCase._fixture_teardown = _flush_retrying_deadlocks(  # type: ignore[method-assign]
        lambda test: quick_flush(test, full_flush))


# --- the cast ---------------------------------------------------------------------------------

def _user(username: str, *, operator: bool = False) -> Any:
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(username, email=f"{username}@example.com", password=PASSWORD)
    if operator:
        user.groups.add(Group.objects.get_or_create(name="operators")[0])
    return user


def error_fields(response: Any) -> dict[str, list[str]]:
    """The ``fields`` of a 400 in the usual error shape (``{"error": {"code": "invalid", …}}``)."""
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["message"]
    return error["fields"]


@pytest.fixture
def alice(db: None) -> Any:
    return _user("alice")


@pytest.fixture
def bob(db: None) -> Any:
    return _user("bob")


@pytest.fixture
def olga(db: None) -> Any:
    return _user("olga", operator=True)


@pytest.fixture
def api() -> Callable[[Any], APIClient]:
    """``api(alice)`` → a client authenticated with a real JWT from the token endpoint."""

    def make(user: Any) -> APIClient:
        client = APIClient()
        response = client.post("/api/v1/auth/token/", {"username": user.username, "password": PASSWORD},
                               format="json")
        assert response.status_code == 200, response.content
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}")
        return client

    return make


def key_client(raw: str, *, header: str = "x-api-key") -> APIClient:
    """A client that authenticates with the API key ``raw``: in ``X-API-Key``, or (``header="authorization"``)
    as ``Authorization: Api-Key <key>``."""
    client = APIClient()
    if header.lower() == "x-api-key":
        client.credentials(HTTP_X_API_KEY=raw)
    else:
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    return client


# --- a real ASGI server (daphne) on loopback ---------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    """The environment of a subprocess (web server, worker) on the pytest database."""
    from django.db import connection

    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        PYTHONUNBUFFERED="1",
    )
    return env


def start_daphne(port: int, env: dict[str, str], name: str = "daphne") -> subprocess.Popen[bytes]:
    """``daphne config.asgi:application`` on 127.0.0.1:port, once ``/health/`` answers."""
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"{name}-{os.getpid()}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                 "config.asgi:application"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_daphne(proc)
            raise RuntimeError(f"daphne did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.1)


def stop_daphne(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- the live worker --------------------------------------------------------------------------

class LiveWorker:
    """A real ``celery -A config worker -B`` in its own process group, logging to test-artifacts/."""

    def __init__(self, env: dict[str, str], queues: str = "default", concurrency: int = 2) -> None:
        self.env = env
        self.queues = queues
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"worker-{os.getpid()}.log"
        self.schedule = ARTIFACTS / f"beat-schedule-{os.getpid()}"
        self.hostname = ""

    def new_hostname(self) -> str:
        """A fresh node name at each start: a restarted worker is not its dead predecessor."""
        return f"test-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "config", "worker", "-B", "-s", str(self.schedule),
                "-Q", self.queues, "-c", str(self.concurrency), "-n", self.hostname, "-l", "info",
                "--without-mingle", "--without-gossip"]

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until it is ready *and* answers a control ping: "ready" is logged before the
        broker has its subscription to the control (broadcast) exchange, and a command sent in between
        reaches nobody."""
        from config.celery import app

        self.log_path.write_bytes(b"")
        self.hostname = self.new_hostname()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log_path.read_bytes() or not app.control.ping([self.hostname], timeout=0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """``kill -9`` of the worker's whole process group (parent, pool children, beat)."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()


@pytest.fixture(scope="session")
def _worker_process(django_db_setup: None, django_db_blocker: Any) -> Iterator[LiveWorker]:
    worker = LiveWorker(subprocess_env(), queues="default,batched")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def live_worker(_worker_process: LiveWorker, transactional_db: None) -> Iterator[LiveWorker]:
    """The session's worker, (re)started if a fault test killed it; needs committed data."""
    _worker_process.ensure_running()
    yield _worker_process


# --- a real ASGI server (daphne) on loopback: downloads, the CLI and the browser -----------------

@pytest.fixture(scope="session")
def _web_process(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    port = free_port()
    proc = start_daphne(port, subprocess_env())
    yield f"http://127.0.0.1:{port}"
    stop_daphne(proc)


@pytest.fixture
def live_web(_web_process: str, transactional_db: None) -> str:
    """Base URL of a daphne server (HTTP + WebSocket) on the pytest database; needs committed data."""
    return _web_process
