"""Results of any size (issue 5): a 1 GiB result produced by a real worker and downloaded from a real
web server must not grow either process's memory by more than 50 MiB; and how fast it downloads.

    .venv/bin/python -m bench.bench_result_memory [--size-mb 1024]   # writes bench/results/result-memory.json

* Own database ``conveyor_algos_bench`` (recreated), Redis DB 10, MEDIA_ROOT under bench/results/.
* Worker: ``celery worker -c 1`` (prefork). ``demo.blob`` runs once at 1 MiB to warm up (imports,
  connections), then at ``--size-mb``; the pool child's RSS is sampled every 50 ms, growth = peak
  during the big run minus its RSS after the warm-up.
* Web: daphne serving ``config.asgi`` on 127.0.0.1. A 1 MiB download warms it up; then the big result
  is streamed with httpx (sha256 checked against the task detail), daphne's RSS sampled the same way.
  The download is repeated with ``Accept-Encoding: zstd`` (random bytes: this measures the compressor's
  cost, not a saving).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DB_URL = os.environ.get("BENCH_RESULT_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/conveyor_algos_bench")
MIB = 1024 * 1024
PASSWORD = "bench-password-not-secret"


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=DB_URL, REDIS_URL="redis://127.0.0.1:6379/10",
               CHANNEL_PREFIX="conveyor-bench-results", MEDIA_ROOT=str(RESULTS / "result-memory-media"),
               LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1", TASK_DEFAULT_TIMEOUT_SECONDS="3600",
               TASK_PROGRESS_MIN_INTERVAL="0.25")
    return out


def prepare() -> None:
    from bench.harness import ensure_database

    ensure_database(DB_URL, recreate=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env(), check=True)
    code = ("from django.contrib.auth.models import User; "
            f"User.objects.create_user('bench', password='{PASSWORD}')")
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env(), check=True)


class Sampler(threading.Thread):
    """Peak RSS of a process (or of the newest child of one) every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    def finish(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def run_blob(client: httpx.Client, size_mb: float, seed: int) -> dict[str, Any]:
    task = client.post("/api/v1/tasks/", json={"algorithm": "demo.blob", "params": {"size_mb": size_mb, "seed": seed}})
    task.raise_for_status()
    task_id = task.json()["id"]

    def done() -> dict[str, Any] | None:
        body = client.get(f"/api/v1/tasks/{task_id}/").json()
        return body if body["status"] in {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"} else None

    body = wait_for(done, 1800, f"demo.blob {size_mb} MiB")
    if body["status"] != "SUCCEEDED":
        raise RuntimeError(f"demo.blob ended {body['status']}: {body['error']}")
    return body


def download(client: httpx.Client, task: dict[str, Any], *, zstd: bool = False) -> dict[str, Any]:
    sha, size = hashlib.sha256(), 0
    # httpx asks for zstd by default once zstandard is installed: say exactly what this run wants.
    headers = {"Accept": "application/octet-stream", "Accept-Encoding": "zstd" if zstd else "identity"}
    decompressor = None
    if zstd:
        import zstandard

        decompressor = zstandard.ZstdDecompressor().decompressobj()
    started = time.perf_counter()
    with client.stream("GET", f"/api/v1/tasks/{task['id']}/result/", headers=headers, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(1 << 20):
            data = decompressor.decompress(chunk) if decompressor else chunk
            sha.update(data)
            size += len(data)
    seconds = time.perf_counter() - started
    if sha.hexdigest() != task["result_meta"]["sha256"] or size != task["result_meta"]["size"]:
        raise RuntimeError(f"downloaded bytes do not match: {size} {sha.hexdigest()} vs {task['result_meta']}")
    return {"seconds": round(seconds, 3), "mib_per_s": round(size / MIB / seconds, 1), "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=float, default=1024)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    prepare()
    port = free_port()
    worker = start([sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "-c", "1",
                    "-n", "bench-results@%h", "--without-mingle", "--without-gossip", "-l", "warning"],
                   RESULTS / "result-memory-worker.log")
    web = start([str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port),
                 "config.asgi:application"], RESULTS / "result-memory-web.log")
    try:
        wait_for(lambda: psutil.Process(worker.pid).children(), 60, "the worker's pool child")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(base), 60, "daphne")
        token = httpx.post(f"{base}/api/v1/auth/token/", json={"username": "bench", "password": PASSWORD}).json()
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token['access']}"}, timeout=60)

        warm = run_blob(client, 1, 1)
        download(client, warm)
        child = psutil.Process(worker.pid).children()[0]
        worker_before = child.memory_info().rss
        sampler = Sampler(child.pid)
        sampler.start()
        produce_started = time.perf_counter()
        big = run_blob(client, args.size_mb, 7)
        produce_seconds = time.perf_counter() - produce_started
        worker_peak = sampler.finish()

        web_before = psutil.Process(web.pid).memory_info().rss
        sampler = Sampler(web.pid)
        sampler.start()
        plain = download(client, big)
        web_peak_plain = sampler.finish()
        sampler = Sampler(web.pid)
        sampler.start()
        packed = download(client, big, zstd=True)
        web_peak_zstd = sampler.finish()
    finally:
        for proc in (worker, web):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in (worker, web):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    report = {
        "size_mib": args.size_mb,
        "worker": {"rss_before_mib": round(worker_before / MIB, 1), "rss_peak_mib": round(worker_peak / MIB, 1),
                   "growth_mib": round((worker_peak - worker_before) / MIB, 1),
                   "produce_seconds": round(produce_seconds, 2)},
        "web": {"rss_before_mib": round(web_before / MIB, 1), "rss_peak_mib": round(web_peak_plain / MIB, 1),
                "growth_mib": round((web_peak_plain - web_before) / MIB, 1),
                "growth_zstd_mib": round((web_peak_zstd - web_before) / MIB, 1)},
        "download": plain, "download_zstd": packed,
        "limit_mib": 50,
    }
    report["ok"] = report["worker"]["growth_mib"] < 50 and report["web"]["growth_mib"] < 50 \
        and report["web"]["growth_zstd_mib"] < 50
    (RESULTS / "result-memory.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
