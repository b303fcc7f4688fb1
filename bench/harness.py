"""The moving parts of a benchmark run: the benchmark database, a daphne web server and one Celery
worker, each a real subprocess in its own process group, pointed at one broker.

The worker serves both Conveyor (``jobs.run_task``) and the raw Celery baselines (``bench.tasks``) from
the same pool, so both sides of every ratio run on the same broker, pool and concurrency.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "logs"
QUEUE = "bench"          # the Conveyor queue (and Celery queue) the throughput and latency runs use
BATCH_QUEUE = "bench-batch"   # the same, with several task ids per message (DISPATCH_BATCH)
SUBMIT_QUEUE = "bench-submit"  # submit benchmark: accepted, dispatched up to its window, never consumed
DISPATCH_BATCH = int(os.environ.get("BENCH_DISPATCH_BATCH", "8"))
# A deep queue of short tasks as an operator would set it up: more ids per message, and a window
# (queue concurrency) of pool size × ids per message, so each pool child always has its next message.
DEEP_QUEUE = "bench-deep"
DEEP_BATCH = int(os.environ.get("BENCH_DEEP_BATCH", "32"))
DEEP_WINDOW = int(os.environ.get("BENCH_DEEP_WINDOW", "64"))

BROKERS = {
    "redis": "redis://127.0.0.1:6379/8",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/conveyor_bench",
}


def base_env(broker_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        DATABASE_URL=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/conveyor_bench"),
        REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8"),
        CELERY_BROKER_URL=broker_url,
        DISPATCH_BATCH=f"{BATCH_QUEUE}:{DISPATCH_BATCH},{DEEP_QUEUE}:{DEEP_BATCH}",
        PYTHONUNBUFFERED="1",
    )
    return env


def ensure_database(url: str, *, recreate: bool = False) -> None:
    """Create the benchmark's own database when it is missing (a fresh machine), or anew."""
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        if recreate:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(broker_url: str) -> None:
    """Configure this process like the web server and worker (same database, Redis, broker)."""
    os.environ.update(base_env(broker_url))
    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()


def prepare_database(*, concurrency: int) -> None:
    """Migrate the benchmark database, create the bare endpoint's table, the user and the queues."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection

    from bench.urls import TABLE_SQL
    from queueing.models import Queue

    call_command("migrate", verbosity=0)
    with connection.cursor() as cur:
        cur.execute(TABLE_SQL)
    if not User.objects.filter(username="bench").exists():
        User.objects.create_user("bench", password="bench-password")
    for name in (QUEUE, BATCH_QUEUE):
        Queue.objects.update_or_create(name=name, defaults={"concurrency": concurrency, "paused": False})
    Queue.objects.update_or_create(name=DEEP_QUEUE, defaults={"concurrency": DEEP_WINDOW, "paused": False})
    Queue.objects.update_or_create(name=SUBMIT_QUEUE, defaults={"concurrency": 8, "paused": False})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A subprocess in its own process group, logging to bench/results/logs/."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        self.cmd, self.env = cmd, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def worker(broker_url: str, *, concurrency: int, pool: str = "prefork", beat: bool = True) -> Process:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "-I", "bench.tasks",
           "-Q", f"{QUEUE},{BATCH_QUEUE},{DEEP_QUEUE},default", "-c", str(concurrency), "-P", pool, "-n", f"{name}@%h",
           "-l", "warning", "--without-mingle", "--without-gossip", "--without-heartbeat"]
    if beat:
        cmd += ["-B", "-s", str(LOGS / f"beat-{name}")]
    return Process(name, cmd, base_env(broker_url))


def web(broker_url: str, port: int) -> Process:
    cmd = [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    env = base_env(broker_url)
    # ASGI runs each request in its own thread: pooled connections, not persistent ones (config/settings.py).
    env.setdefault("DB_POOL_MAX_SIZE", "20")
    return Process(f"web-{port}", cmd, env)


def wait_http(port: int, timeout: float = 60.0, proc: Process | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"web server exited:\n{proc.tail()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"web server on :{port} did not answer")


def ensure_rabbitmq_vhost(url: str) -> None:
    """The benchmark's own vhost (``rabbitmqctl``; an existing one is kept)."""
    vhost = url.rsplit("/", 1)[-1]
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], capture_output=True)


def rss_mb(proc: Process) -> float:
    """Resident memory of a process and everything in its process group (pool children, beat), MiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != proc.pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError, ValueError):
            continue
    return round(total / 1024, 1)


class PeakRss:
    """Samples rss_mb() of some processes every 0.5 s in a thread; ``peak`` holds the maxima."""

    def __init__(self, procs: dict[str, Process]) -> None:
        import threading

        self.procs, self.peak = procs, {name: 0.0 for name in procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, proc in self.procs.items():
                self.peak[name] = max(self.peak[name], rss_mb(proc))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()
