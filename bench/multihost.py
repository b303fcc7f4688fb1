"""Multi-host check with network namespaces (run scripts/netns_up.sh first; root only).

cv-svc (10.77.0.1) runs a private PostgreSQL, redis-server, daphne and beat; cv-w1 and cv-w2 run one
Celery worker each and reach the services only over the veth links. Each "host" has its own MEDIA_ROOT, as
separate machines have separate disks. The check: tasks run on both workers, progress reaches a WebSocket
client of the web host, results and artifacts written on a worker host download through the web host.

    scripts/netns_up.sh && python -m bench.multihost; scripts/netns_down.sh

Writes bench/results/multihost.json. Extra environment (e.g. STORAGE_BACKEND/STORAGE_OPTIONS for an
S3-compatible store) is passed to every process.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import RESULTS, ROOT, Process
from tests.chaos.stack import PG_BIN, _as_postgres

SVC = "10.77.0.1"
BASE = f"http://{SVC}:8000"


def ns(name: str) -> list[str]:
    return ["ip", "netns", "exec", name]


def env(media: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=f"postgres://postgres@{SVC}:5432/conveyor",
             REDIS_URL=f"redis://{SVC}:6379/0", CELERY_BROKER_URL=f"redis://{SVC}:6379/0",
             CHANNEL_PREFIX="conveyor-mh", MEDIA_ROOT=str(media), RATE_LIMIT_ENABLED="false",
             ALLOWED_HOSTS=f"{SVC},127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    return e


def start_services(tmp: Path) -> None:
    data = tmp / "pg"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    _as_postgres([str(PG_BIN / "initdb"), "-D", str(data / "data"), "-U", "postgres", "-A", "trust", "--no-sync"])
    with open(data / "data" / "pg_hba.conf", "a") as hba:
        hba.write("host all all 10.77.0.0/24 trust\n")
    subprocess.run([*ns("cv-svc"), "runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data / "data"),
                    "-l", str(data / "log"), "-w", "-o", f"-p 5432 -k {data} -c listen_addresses={SVC} -c fsync=off",
                    "start"], check=True, capture_output=True)
    subprocess.run(["psql", "-h", SVC, "-U", "postgres", "-c", "CREATE DATABASE conveyor"], check=True,
                   capture_output=True)
    subprocess.Popen([*ns("cv-svc"), "redis-server", "--bind", SVC, "--port", "6379", "--save", "",
                      "--protected-mode", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)  # scripts/netns_down.sh ends it with the namespace
    time.sleep(0.5)


def run(name: str, host: str, cmd: list[str], e: dict[str, str]) -> Process:
    p = Process(f"multihost-{name}", [*ns(host), *cmd], e)
    p.start()
    return p


def websocket_progress(task_id: str, token: str, timeout: float = 60) -> list[str]:
    import websockets

    async def listen() -> list[str]:
        seen: list[str] = []
        async with websockets.connect(f"ws://{SVC}:8000/ws/tasks/{task_id}/?token={token}") as ws:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
                seen.append(message.get("event", message.get("type", "?")))
                if message.get("event") in {"task.succeeded", "task.failed"}:
                    break
        return seen

    return asyncio.run(listen())


def main() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-multihost-"))
    tmp.chmod(0o755)  # PostgreSQL runs as the postgres user
    # MULTIHOST_SHARED_MEDIA=1: one MEDIA_ROOT for all, as a shared volume (NFS) would give.
    shared = os.environ.get("MULTIHOST_SHARED_MEDIA") == "1"
    media = {h: tmp / ("media" if shared else f"media-{h}") for h in ("svc", "w1", "w2")}
    procs: list[Process] = []
    out: dict[str, Any] = {"storage": os.environ.get("STORAGE_BACKEND", "algorithms.storage.DatabaseStorage"),
                           "shared_media_root": shared}
    try:
        start_services(tmp)
        py = sys.executable
        subprocess.run([*ns("cv-svc"), py, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env(media["svc"]), check=True)
        create = "from django.contrib.auth.models import User; User.objects.create_user('mh', password='mh-password')"
        subprocess.run([*ns("cv-svc"), py, "manage.py", "shell", "-c", create], cwd=ROOT, env=env(media["svc"]), check=True)
        daphne = str(Path(py).parent / "daphne")
        procs.append(run("web", "cv-svc", [daphne, "-b", SVC, "-p", "8000", "config.asgi:application"], env(media["svc"])))
        procs.append(run("beat", "cv-svc", [py, "-m", "celery", "-A", "config", "beat", "-s", str(tmp / "beat"),
                                            "-l", "warning"], env(media["svc"])))
        for w in ("w1", "w2"):
            procs.append(run(w, f"cv-{w}", [py, "-m", "celery", "-A", "config", "worker", "-Q", "default", "-c", "2",
                                            "-n", f"{w}@%h", "-l", "info", "--without-mingle", "--without-gossip"],
                             env(media[w])))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{BASE}/health/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        token = httpx.post(f"{BASE}/api/v1/auth/token/", json={"username": "mh", "password": "mh-password"}).json()["access"]
        client = httpx.Client(base_url=BASE, headers={"Authorization": f"Bearer {token}"}, timeout=60)

        # 1. tasks run on both worker hosts
        body = {"tasks": [{"algorithm": "demo.hello", "params": {"seconds": 0.5, "steps": 2}}] * 12}
        ids = [t["id"] for t in client.post("/api/v1/tasks/batch/", json=body).json()["tasks"]]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            tasks = [client.get(f"/api/v1/tasks/{i}/").json() for i in ids]
            if all(t["status"] == "SUCCEEDED" for t in tasks):
                break
            time.sleep(0.5)
        out["tasks_by_worker"] = {}
        for t in tasks:
            host = (t.get("worker") or "?").split("@")[0]
            out["tasks_by_worker"][host] = out["tasks_by_worker"].get(host, 0) + 1
        out["all_succeeded"] = all(t["status"] == "SUCCEEDED" for t in tasks)

        # 2. progress from a worker host reaches a WebSocket client of the web host
        task = client.post("/api/v1/tasks/", json={"algorithm": "demo.hello", "params": {"seconds": 3, "steps": 6}}).json()
        events = websocket_progress(task["id"], token)
        out["websocket_events"] = events
        out["websocket_progress_seen"] = events.count("task.progress")

        # 3. a result file and artifacts written on a worker host, downloaded through the web host
        blob = client.post("/api/v1/tasks/", json={"algorithm": "demo.blob", "params": {"size_mb": 2, "seed": 1}}).json()
        files = client.post("/api/v1/tasks/", json={"algorithm": "demo.files", "params": {"count": 2}}).json()
        for t in (blob, files):
            deadline = time.monotonic() + 60
            while client.get(f"/api/v1/tasks/{t['id']}/").json()["status"] not in {"SUCCEEDED", "FAILED"}:
                assert time.monotonic() < deadline, "task did not finish"
                time.sleep(0.3)
        result = client.get(f"/api/v1/tasks/{blob['id']}/result/")
        out["result_download"] = {"status": result.status_code, "bytes": len(result.content)}
        listing = client.get(f"/api/v1/tasks/{files['id']}/artifacts/").json()
        downloads = [client.get(f"/api/v1/tasks/{files['id']}/artifacts/{a['name']}/") for a in listing]
        out["artifact_downloads"] = [{"name": a["name"], "status": d.status_code} for a, d in zip(listing, downloads)]
    finally:
        for p in procs:
            p.kill()
        for h in ("cv-svc",):
            subprocess.run([*ns(h), "runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                            str(tmp / "pg" / "data"), "-m", "immediate", "stop"], capture_output=True)
        subprocess.run(["ip", "netns", "pids", "cv-svc"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"multihost{'-shared' if shared else ''}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
