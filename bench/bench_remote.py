"""Remote services: progress latency per backend and the speed of a 100 MB result.

    .venv/bin/python bench/bench_remote.py   # writes bench/results/remote.json

Runs the real reference services (examples/) as subprocesses on loopback and the real runner
(watchdog, run context, artifact storage) in this process on its own database
(``conveyor_remote_bench``, Redis DB 7), so the numbers are the bridge's, not a worker's start-up.

* progress latency: the service stamps ``sent_at`` into each progress message's metrics; the
  latency is the ``task.progress`` event's ``created_at`` (committed in PostgreSQL) minus ``sent_at``.
* transfer: the time ``bridge._download`` takes to stream the blob into results storage, sha256 checked.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/conveyor_remote_bench")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/7")
os.environ.setdefault("CHANNEL_PREFIX", "conveyor-bench-remote")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("MEDIA_ROOT", str(ROOT / "bench" / "results" / "remote-media"))


def main() -> None:
    from bench.harness import ensure_database

    ensure_database("postgres://postgres@127.0.0.1:5432/conveyor_remote_bench")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from algorithms.remote import bridge, discovery
    from algorithms.remote.models import RemoteService
    from jobs import execution, runner, services
    from jobs.models import Task, TaskEvent
    from tests.remote.conftest import ServiceProcess

    user, _ = User.objects.get_or_create(username="bench-remote")
    timings: dict[str, float] = {}
    original = bridge._download

    def timed_download(*args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings["download_s"] = time.perf_counter() - started

    bridge._download = timed_download

    def run(algorithm: str, params: dict) -> Task:
        spec = services.build_spec(algorithm=algorithm, params=params, max_retries=0, timeout_seconds=600)
        task, _ = services.submit(owner=user, spec=spec)
        Task.objects.filter(id=task.id).update(status="QUEUED")
        claimed = execution.claim(task_id=task.id, worker="bench")
        assert claimed is not None
        outcome = runner.run(claimed)
        execution.finish(task_id=task.id, outcome=outcome)
        done = Task.objects.get(id=task.id)
        assert done.status == "SUCCEEDED", (done.status, done.error)
        return done

    def latencies(task: Task) -> list[float]:
        out = []
        for e in TaskEvent.objects.filter(task=task, event="task.progress"):
            sent = (e.data.get("metrics") or {}).get("sent_at")
            if sent:
                out.append((e.created_at.timestamp() - sent) * 1000)
        return out

    report: dict[str, dict] = {}
    grpc, ws = ServiceProcess("examples/grpc_service/server.py"), ServiceProcess("examples/ws_service/server.py")
    grpc.start()
    ws.start()
    try:
        RemoteService.objects.all().delete()
        for name, kind, address in (("bench-grpc", "grpc", grpc.address), ("bench-ws", "ws", f"ws://{ws.address}/")):
            discovery.refresh(RemoteService.objects.create(name=name, kind=kind, address=address, call_timeout=60))
        for backend, algorithm, params in (("grpc", "demo.hello_remote", {"steps": 40, "delay": 0.3}),
                                           ("ws", "simulate", {"n": 10, "steps": 40, "delay": 0.3})):
            ms = sorted(latencies(run(algorithm, params)))
            report[f"progress_latency_{backend}"] = {
                "samples": len(ms), "median_ms": round(statistics.median(ms), 2),
                "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2), "max_ms": round(ms[-1], 2)}
        size = 100 * 1024 * 1024
        run("demo.bytes_remote", {"size": size, "seed": 1})
        report["transfer_100mb_grpc"] = {"bytes": size, "seconds": round(timings["download_s"], 3),
                                         "mb_per_s": round(size / 1e6 / timings["download_s"], 1)}
        n = size // 8
        run("simulate", {"n": n, "steps": 1, "delay": 0, "seed": 1})
        report["transfer_100mb_ws_npy"] = {"bytes": n * 8 + 128, "seconds": round(timings["download_s"], 3),
                                           "mb_per_s": round(n * 8 / 1e6 / timings["download_s"], 1)}
    finally:
        grpc.kill()
        ws.kill()
        shutil.rmtree(os.environ["MEDIA_ROOT"], ignore_errors=True)  # the 100 MB results
    out = ROOT / "bench" / "results" / "remote.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
