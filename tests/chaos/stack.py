"""A private Conveyor stack for fault tests: its own PostgreSQL cluster and redis-server (so they can be
killed and restarted without touching anybody else's), a daphne web server, Celery workers and beat.

Everything is a real subprocess in its own process group; the test talks to the web server over HTTP and
reads PostgreSQL directly (psycopg) to check the invariants, and the runs' own records (tests/chaos/runs.py,
in ``runs_dir``) to check that no task ran twice at once. RabbitMQ, when chosen as the broker, is the
machine's server with a private vhost that is recreated empty for each stack.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.harness import Process, free_port

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), Path("/usr/bin"))
PASSWORD = "chaos-password"
RABBIT_VHOST = f"conveyor_chaos_{os.getpid()}"  # per run: two runs on one machine never share one
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def _as_postgres(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


class Postgres:
    """A throwaway cluster in a temporary directory, on a free port, fsync off."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-chaos-pg-"))
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust",
                      "--no-sync", "-E", "UTF8"])
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/conveyor"

    def start(self) -> None:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                      "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                            "-c synchronous_commit=off -c max_connections=200", "start"])

    def stop(self, mode: str = "fast") -> None:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", mode, "-w", "stop"])

    def create_database(self) -> None:
        with psycopg.connect(f"postgres://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE conveyor")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """A redis-server without persistence: a restart loses everything, like a crashed cache node."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def rabbitmq_url() -> str:
    """A fresh, empty vhost on the machine's RabbitMQ (fails the caller when RabbitMQ is absent)."""
    import pytest

    try:
        with __import__("socket").create_connection(("127.0.0.1", 5672), timeout=1):
            pass
    except OSError:
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (make services starts it)")
    subprocess.run(["rabbitmqctl", "delete_vhost", RABBIT_VHOST], capture_output=True)
    subprocess.run(["rabbitmqctl", "add_vhost", RABBIT_VHOST], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", RABBIT_VHOST, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True)
    return f"amqp://guest:guest@127.0.0.1:5672/{RABBIT_VHOST}"


class Stack:
    def __init__(self, *, broker: str = "redis") -> None:
        self.broker = broker
        self.pg = Postgres()
        self.redis = Redis()
        self.web: Process | None = None
        self.web_port = 0
        self.workers: list[Process] = []
        self.beat: Process | None = None
        self.token = ""
        self.broker_url = ""
        self.runs_dir = Path(tempfile.mkdtemp(prefix="conveyor-chaos-runs-"))

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.pg.start()
        self.pg.create_database()
        self.redis.start()
        self.broker_url = rabbitmq_url() if self.broker == "rabbitmq" else self.redis.url
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=self.env(), check=True)
        create = f"from django.contrib.auth.models import User; User.objects.create_user('chaos', password={PASSWORD!r})"
        subprocess.run([sys.executable, "manage.py", "shell", "-c", create], cwd=ROOT, env=self.env(), check=True)
        self.start_web()
        self.start_beat()

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="tests.chaos.settings", CHAOS_RUNS_DIR=str(self.runs_dir),
            DATABASE_URL=self.pg.url, REDIS_URL=self.redis.url,
            CELERY_BROKER_URL=self.broker_url or self.redis.url, CHANNEL_PREFIX=f"chaos-{self.redis.port}",
            PYTHONUNBUFFERED="1", RATE_LIMIT_ENABLED="false", DB_CONNECT_TIMEOUT="2",
        )
        env.update(extra)
        return env

    def start_web(self, **extra: str) -> None:
        self.web_port = free_port()
        cmd = [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(self.web_port),
               "config.asgi:application"]
        self.web = Process(f"chaos-web-{self.web_port}", cmd, self.env(DB_POOL_MAX_SIZE="10", **extra))
        self.web.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/health/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"web did not start:\n{self.web.tail()}")
        response = httpx.post(f"{self.base}/api/v1/auth/token/", json={"username": "chaos", "password": PASSWORD})
        assert response.status_code == 200, response.text
        self.token = response.json()["access"]

    def restart_web(self, **extra: str) -> None:
        if self.web is not None:
            self.web.stop()
        self.start_web(**extra)

    def start_beat(self) -> None:
        name = f"chaos-beat-{uuid.uuid4().hex[:6]}"
        schedule = self.pg.dir / "beat-schedule"  # removed with the cluster's directory
        self.beat = Process(name, [sys.executable, "-m", "celery", "-A", "config", "beat", "-s", str(schedule),
                                   "-l", "warning"], self.env())
        self.beat.start()

    def start_worker(self, *, concurrency: int = 2, queues: str = "default", pool: str = "prefork",
                     **extra: str) -> Process:
        name = f"chaos-{uuid.uuid4().hex[:6]}"
        cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-c", str(concurrency), "-P", pool,
               "-n", f"{name}@%h", "-l", "info", "--without-mingle", "--without-gossip"]
        worker = Process(name, cmd, self.env(**extra))
        worker.start()
        deadline = time.monotonic() + 60
        while b" ready." not in worker.log_path.read_bytes():
            if not worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{worker.tail()}")
            time.sleep(0.1)
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: Process) -> None:
        """``kill -9`` of the whole process group: the parent and every pool child."""
        worker.kill()
        self.workers.remove(worker)

    def stop_worker(self, worker: Process, timeout: float = 60.0) -> None:
        """Warm shutdown, as a deploy does: SIGTERM to the main process only (docs/queues.md), which lets
        running tasks finish first; returns once it has exited."""
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(timeout=timeout)
        self.workers.remove(worker)

    def destroy(self) -> None:
        for proc in [*self.workers, self.beat, self.web]:
            if proc is not None:
                proc.kill()
        if self.broker == "rabbitmq":
            subprocess.run(["rabbitmqctl", "delete_vhost", RABBIT_VHOST], capture_output=True)
        self.redis.kill()
        self.pg.destroy()
        shutil.rmtree(self.runs_dir, ignore_errors=True)

    # --- talking to it --------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=timeout)

    @contextmanager
    def db(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.pg.url, autocommit=True, connect_timeout=5) as conn:
            yield conn

    def worker_logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.tail(2000)}" for w in self.workers)


def killpg(proc: Process, sig: int = signal.SIGKILL) -> None:
    os.killpg(proc.pid, sig)
