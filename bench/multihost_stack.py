"""Three "hosts" on one machine in network namespaces, and the multi-host check run against them.

``scripts/netns_up.sh`` joins three namespaces to a bridge (cvbr0, 10.77.0.0/24): cv-svc (10.77.0.1) runs a
private PostgreSQL, redis-server, daphne and beat; cv-w1 (10.77.0.2) and cv-w2 (10.77.0.3) run one Celery
worker each and reach the services only over the veth links. Each host has its own MEDIA_ROOT, as separate
machines have separate disks. Nothing listens on the machine's 127.0.0.1 (the services bind 10.77.0.1 inside
cv-svc), so the machine's own services and the fault tests' private stacks (tests/chaos/stack.py, on
127.0.0.1 ports) are never in the way.

Used by ``python -m bench.multihost`` (writes the observations as JSON) and by
``tests/multihost/test_multihost.py`` (asserts them; ``make test`` runs it). Needs root.

    with MultiHost(workdir) as hosts:   # namespaces (re)made, services, web, beat, two workers
        observations = check(hosts)     # what the run saw; asserts nothing
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.harness import LOGS, ROOT, Process
from tests.chaos.stack import PG_BIN, _as_postgres

SVC = "10.77.0.1"
BASE = f"http://{SVC}:8000"
NAMESPACES = {"svc": "cv-svc", "w1": "cv-w1", "w2": "cv-w2"}
WORKERS = ("w1", "w2")
USER, PASSWORD = "mh", "mh-password"
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
LOCK = Path(tempfile.gettempdir()) / "conveyor-multihost.lock"
WORKDIR = Path(tempfile.gettempdir()) / "conveyor-multihost"


class NetnsUnavailable(RuntimeError):
    """Not root, or ``ip netns`` refused: the check cannot run here."""


def ns(host: str) -> list[str]:
    return ["ip", "netns", "exec", NAMESPACES[host]]


def namespaces_down() -> None:
    """``scripts/netns_down.sh``: every process left inside a namespace is killed with it."""
    subprocess.run([str(ROOT / "scripts" / "netns_down.sh")], capture_output=True, text=True)


def namespaces_up() -> None:
    """Fresh namespaces: whatever an earlier (killed) run left behind is removed first."""
    if os.geteuid() != 0:
        raise NetnsUnavailable(f"the multi-host check needs root for `ip netns` (euid {os.geteuid()})")
    namespaces_down()
    up = subprocess.run([str(ROOT / "scripts" / "netns_up.sh")], capture_output=True, text=True)
    if up.returncode != 0:
        namespaces_down()
        raise NetnsUnavailable(f"scripts/netns_up.sh failed ({up.returncode}): {up.stderr.strip() or up.stdout}")


class MultiHost:
    """The running hosts: ``start()`` (or ``with``) brings everything up, ``stop()`` takes it all down,
    namespaces included, and may be called after a partial start. One at a time per machine (a lock)."""

    def __init__(self, workdir: Path = WORKDIR, *, logs: Path = LOGS, shared_media: bool = False,
                 concurrency: int = 2) -> None:
        self.workdir = workdir
        self.logs = logs
        self.shared_media = shared_media
        self.concurrency = concurrency
        # shared_media: one MEDIA_ROOT for all, as a shared volume (NFS) would give.
        self.media = {h: workdir / ("media" if shared_media else f"media-{h}") for h in NAMESPACES}
        self.procs: dict[str, Process] = {}
        self.token = ""
        self._lock: Any = None

    # --- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> MultiHost:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable(f"the multi-host check needs root for `ip netns` (euid {os.geteuid()})")
        self._lock = open(LOCK, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # another run of the check (test or bench) waits here
        namespaces_up()
        shutil.rmtree(self.workdir, ignore_errors=True)  # an earlier killed run's data directory
        self.workdir.mkdir(parents=True)
        self.workdir.chmod(0o755)  # PostgreSQL runs as the postgres user
        for path in self.media.values():
            path.mkdir(exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._start_services()
        py = sys.executable
        for cmd in (["migrate", "-v", "0"],
                    ["shell", "-c", f"from django.contrib.auth.models import User; "
                                    f"User.objects.create_user({USER!r}, password={PASSWORD!r})"]):
            subprocess.run([*ns("svc"), py, "manage.py", *cmd], cwd=ROOT, env=self.env("svc"), check=True,
                           capture_output=True)
        self._run("web", "svc", [str(Path(py).parent / "daphne"), "-b", SVC, "-p", "8000", "config.asgi:application"])
        self._run("beat", "svc", [py, "-m", "celery", "-A", "config", "beat", "-s", str(self.workdir / "beat"),
                                  "-l", "warning"])
        for w in WORKERS:
            self._run(w, w, [py, "-m", "celery", "-A", "config", "worker", "-Q", "default", "-c", str(self.concurrency),
                             "-n", f"{w}@%h", "-l", "info", "--without-mingle", "--without-gossip"])
        self._wait_ready()
        response = httpx.post(f"{BASE}/api/v1/auth/token/", json={"username": USER, "password": PASSWORD},
                              trust_env=False, timeout=30)
        response.raise_for_status()
        self.token = response.json()["access"]

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        subprocess.run([*ns("svc"), "runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                        str(self.workdir / "pg" / "data"), "-m", "immediate", "stop"], capture_output=True)
        namespaces_down()  # redis-server and anything else still inside
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def env(self, host: str) -> dict[str, str]:
        e = dict(os.environ)
        e.update(DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=f"postgres://postgres@{SVC}:5432/conveyor",
                 REDIS_URL=f"redis://{SVC}:6379/0", CELERY_BROKER_URL=f"redis://{SVC}:6379/0",
                 CHANNEL_PREFIX="conveyor-mh", MEDIA_ROOT=str(self.media[host]), RATE_LIMIT_ENABLED="false",
                 ALLOWED_HOSTS=f"{SVC},127.0.0.1,localhost", PYTHONUNBUFFERED="1")
        return e

    def _start_services(self) -> None:
        data = self.workdir / "pg"
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data / "data"), "-U", "postgres", "-A", "trust", "--no-sync"])
        with open(data / "data" / "pg_hba.conf", "a") as hba:
            hba.write("host all all 10.77.0.0/24 trust\n")
        subprocess.run([*ns("svc"), "runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                        str(data / "data"), "-l", str(data / "log"), "-w", "-o",
                        f"-p 5432 -k {data} -c listen_addresses={SVC} -c fsync=off", "start"],
                       check=True, capture_output=True)
        import psycopg

        with psycopg.connect(f"postgres://postgres@{SVC}:5432/postgres", autocommit=True, connect_timeout=10) as c:
            c.execute("CREATE DATABASE conveyor")
        subprocess.Popen([*ns("svc"), "redis-server", "--bind", SVC, "--port", "6379", "--save", "",
                          "--protected-mode", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)  # ended with the namespace (namespaces_down)
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host=SVC, port=6379, socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _run(self, name: str, host: str, cmd: list[str]) -> None:
        p = Process(f"multihost-{name}", [*ns(host), *cmd], self.env(host))
        p.log_path = self.logs / f"multihost-{name}.log"
        p.log_path.write_bytes(b"")  # an earlier run's " ready." must not count
        p.start()
        self.procs[name] = p

    def _wait_ready(self, timeout: float = 90) -> None:
        """The web host answers /health/ and both workers consume (their " ready." line)."""
        deadline = time.monotonic() + timeout
        waiting = {"web", *WORKERS}
        while waiting:
            for name in list(waiting):
                proc = self.procs[name]
                if not proc.alive():
                    raise RuntimeError(f"{name} exited:\n{proc.tail()}")
                if name == "web":
                    try:
                        if httpx.get(f"{BASE}/health/", timeout=1, trust_env=False).status_code == 200:
                            waiting.discard(name)
                    except httpx.HTTPError:
                        pass
                elif b" ready." in proc.log_path.read_bytes():
                    waiting.discard(name)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout}s: {sorted(waiting)}\n{self.log_tails()}")
            time.sleep(0.2)

    # --- talking to the web host ----------------------------------------------------------------
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=BASE, headers={"Authorization": f"Bearer {self.token}"}, timeout=60,
                            trust_env=False)

    def process_env(self, name: str) -> dict[str, str]:
        """The environment a running process really has (``ip netns exec`` execs the command in place)."""
        raw = Path(f"/proc/{self.procs[name].pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)

    def log_tails(self, n: int = 1500) -> str:
        return "\n".join(f"--- {name} ({p.log_path}) ---\n{p.tail(n)}" for name, p in self.procs.items())


def wait_final(client: httpx.Client, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """The tasks once all are final, or as they are when ``timeout`` runs out (the caller judges)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = [client.get(f"/api/v1/tasks/{i}/").json() for i in ids]
        if all(t.get("status") in FINAL for t in tasks) or time.monotonic() > deadline:
            return tasks
        time.sleep(0.3)


def host_of(task: dict[str, Any]) -> str:
    return (task.get("worker") or "?").split("@")[0]


def websocket_events(task_id: str, token: str, timeout: float = 30) -> list[str]:
    """The events a WebSocket client of the web host sees for a task, until its final one (or timeout)."""
    import websockets

    async def listen() -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        async with websockets.connect(f"ws://{SVC}:8000/ws/tasks/{task_id}/?token={token}", proxy=None) as ws:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), left))
                except TimeoutError:
                    break
                seen.append(message.get("event", message.get("type", "?")))
                if message.get("event") in {"task.succeeded", "task.failed", "task.cancelled", "task.timed_out"}:
                    break
        return seen

    return asyncio.run(listen())


def expected_blob(size_mb: float, seed: int) -> bytes:
    """What ``demo.blob`` (binary) writes: the same generator, the same 1 MiB chunks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total, out = int(size_mb * 1024 * 1024), bytearray()
    while len(out) < total:
        out += rng.bytes(min(1024 * 1024, total - len(out)))
    return bytes(out)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(hosts: MultiHost, *, tasks: int = 6, blob_mb: float = 2) -> dict[str, Any]:
    """Run the multi-host check; return what it saw. Every wait is bounded and nothing is asserted here:
    the test (tests/multihost) asserts, the bench script records."""
    out: dict[str, Any] = {"storage": os.environ.get("STORAGE_BACKEND", "algorithms.storage.DatabaseStorage"),
                           "shared_media_root": hosts.shared_media,
                           "media_roots": {h: hosts.env(h)["MEDIA_ROOT"] for h in NAMESPACES}}
    with hosts.client() as client:
        # 1. tasks submitted to the web host run on both worker hosts
        # 3 s each: one worker alone would take three rounds, so a worker whose broker subscription comes a
        # few seconds after its " ready." (a loaded machine) still gets some
        body = {"tasks": [{"algorithm": "demo.hello", "params": {"seconds": 3, "steps": 3}}] * tasks}
        submitted = client.post("/api/v1/tasks/batch/", json=body)
        submitted.raise_for_status()
        done = wait_final(client, [t["id"] for t in submitted.json()["tasks"]], timeout=60)
        out["tasks"] = [{"id": t["id"], "status": t["status"], "worker": t.get("worker")} for t in done]
        out["tasks_by_worker"] = dict(Counter(host_of(t) for t in done))
        out["all_succeeded"] = all(t["status"] == "SUCCEEDED" for t in done)

        # 2. progress reported on a worker host reaches a WebSocket client of the web host
        task = client.post("/api/v1/tasks/", json={"algorithm": "demo.hello", "params": {"seconds": 2, "steps": 4}})
        task.raise_for_status()
        events = websocket_events(task.json()["id"], hosts.token)
        (ws_task,) = wait_final(client, [task.json()["id"]], timeout=30)
        out["websocket_events"] = events
        out["websocket_progress_seen"] = events.count("task.progress")
        out["websocket_task"] = {"status": ws_task["status"], "worker": ws_task.get("worker")}

        # 3. a result file and artifacts written on a worker host, downloaded through the web host
        blob = client.post("/api/v1/tasks/", json={"algorithm": "demo.blob", "params": {"size_mb": blob_mb, "seed": 1}})
        files = client.post("/api/v1/tasks/", json={"algorithm": "demo.files", "params": {"count": 2}})
        blob.raise_for_status()
        files.raise_for_status()
        blob_task, files_task = wait_final(client, [blob.json()["id"], files.json()["id"]], timeout=60)
        result = client.get(f"/api/v1/tasks/{blob_task['id']}/result/")
        out["result_download"] = {"task_status": blob_task["status"], "worker": blob_task.get("worker"),
                                  "status": result.status_code, "bytes": len(result.content),
                                  "sha256": sha256(result.content),
                                  "expected_sha256": sha256(expected_blob(blob_mb, 1)),
                                  "body": "" if result.status_code == 200 else result.text[:300]}
        listing = client.get(f"/api/v1/tasks/{files_task['id']}/artifacts/")
        names = [a["name"] for a in listing.json()] if listing.status_code == 200 else []
        out["artifacts"] = {"task_status": files_task["status"], "worker": files_task.get("worker"),
                            "listing_status": listing.status_code, "names": names}
        out["artifact_downloads"] = []
        for name in names:
            d = client.get(f"/api/v1/tasks/{files_task['id']}/artifacts/{name}/")
            index = name.removeprefix("file-").removesuffix(".txt")
            expected = f"artifact {index} of task {files_task['id']}\n".encode()
            out["artifact_downloads"].append({"name": name, "status": d.status_code, "bytes": len(d.content),
                                              "sha256": sha256(d.content), "expected_sha256": sha256(expected)})
        out["process_media_roots"] = {name: hosts.process_env(name).get("MEDIA_ROOT") for name in ("web", *WORKERS)}
        out["media_files"] = {h: {str(f.relative_to(root)): sha256(f.read_bytes()) for f in root.rglob("*") if f.is_file()}
                              for h, root in hosts.media.items()}
    return out
