"""Reference gRPC algorithm service for Conveyor (a template for algorithm teams).

    python examples/grpc_service/server.py --port 50051 [--token SECRET]

It implements ``algorithms/remote/proto/algorithm.proto``: three schemes, tasks kept in memory, one
thread per task, progress pushed to every watcher, results either inline JSON or a blob streamed in
1 MiB chunks. Copy it and replace ``SCHEMES``/the ``run_*`` functions with your own code. To generate
the stubs in your own project:

    python -m grpc_tools.protoc -I<dir of algorithm.proto> --python_out=. --grpc_python_out=. algorithm.proto

Each event (submitted, cancelled, finished) is printed as one JSON line on stdout.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: for the generated stubs
from algorithms.remote.proto import load  # noqa: E402

pb2, pb2_grpc = load()
CHUNK = 1 << 20

SCHEMES: dict[str, dict[str, Any]] = {
    "demo.hello_remote": {
        "description": "Greets someone, one progress step at a time.",
        "params_schema": {
            "type": "object", "additionalProperties": False,
            "properties": {"name": {"type": "string", "minLength": 1, "default": "world"},
                           "steps": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 5},
                           "delay": {"type": "number", "minimum": 0, "maximum": 60, "default": 0.05}},
        },
    },
    "demo.bytes_remote": {
        "description": "Produces `size` deterministic pseudo-random bytes (a large-result template).",
        "params_schema": {
            "type": "object", "additionalProperties": False, "required": ["size"],
            "properties": {"size": {"type": "integer", "minimum": 0, "maximum": 8 << 30},
                           "seed": {"type": "integer", "default": 0}},
        },
    },
    "grid.power_flow_remote": {
        "description": "AC power flow (Newton-Raphson, PYPOWER) of a standard IEEE case.",
        "params_schema": {
            "type": "object", "additionalProperties": False,
            "properties": {"case": {"enum": ["case9", "case14", "case30"], "default": "case9"},
                           "load_scale": {"type": "number", "exclusiveMinimum": 0, "maximum": 3, "default": 1.0}},
        },
    },
}
BROKEN = {"demo.broken_remote": {"description": "an invalid schema", "params_schema": {"type": "no-such-type"}}}


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


class Task:
    def __init__(self, scheme: str, params: dict[str, Any], client_task_id: str) -> None:
        self.id = uuid.uuid4().hex
        self.scheme, self.params, self.client_task_id = scheme, params, client_task_id
        self.cond = threading.Condition()
        self.progress = pb2.Progress(state=pb2.RUNNING)
        self.cancel = threading.Event()
        self.blob: Callable[[int], Iterator[bytes]] | None = None

    def report(self, **fields: Any) -> None:
        with self.cond:
            self.progress = pb2.Progress(**fields)
            self.cond.notify_all()

    def step(self, percent: float, stage: str, message: str = "", **metrics: Any) -> None:
        self.report(state=pb2.RUNNING, percent=percent, stage=stage, message=message,
                    metrics_json=json.dumps({**metrics, "sent_at": time.time()}))

    @property
    def final(self) -> bool:
        return self.progress.state in (pb2.SUCCEEDED, pb2.FAILED, pb2.CANCELLED)


def run_hello(task: Task) -> dict[str, Any] | None:
    p = {"name": "world", "steps": 5, "delay": 0.05, **task.params}
    for i in range(p["steps"]):
        if task.cancel.wait(p["delay"]):
            return None
        task.step(100.0 * (i + 1) / p["steps"], "greeting", f"step {i + 1}/{p['steps']}", step=i + 1)
    return {"greeting": f"Hello, {p['name']}!", "steps": p["steps"]}


def byte_chunks(size: int, seed: int, offset: int = 0) -> Iterator[bytes]:
    """Chunk k is a function of (seed, k) alone, so a transfer can resume at any offset."""
    import numpy as np

    k = offset // CHUNK
    while k * CHUNK < size:
        data = np.random.default_rng([seed, k]).bytes(min(CHUNK, size - k * CHUNK))
        yield data[offset - k * CHUNK:] if offset > k * CHUNK else data
        k += 1


def run_bytes(task: Task) -> None:
    size, seed = task.params["size"], task.params.get("seed", 0)
    sha, done = hashlib.sha256(), 0
    for chunk in byte_chunks(size, seed):  # one pass to announce the checksum; the transfer regenerates
        if task.cancel.is_set():
            return None
        sha.update(chunk)
        done += len(chunk)
        task.step(99.0 * done / max(size, 1), "generating", f"{done}/{size} bytes")
    task.blob = lambda offset: byte_chunks(size, seed, offset)
    return {"blob_size": size, "blob_sha256": sha.hexdigest()}  # type: ignore[return-value]


def run_power_flow(task: Task) -> dict[str, Any] | None:
    from pypower import api as pp

    p = {"case": "case9", "load_scale": 1.0, **task.params}
    case = getattr(pp, p["case"])()
    case["bus"][:, 2:4] *= p["load_scale"]
    task.step(10.0, "solving", f"{p['case']} ×{p['load_scale']}")
    result, ok = pp.runpf(case, pp.ppoption(VERBOSE=0, OUT_ALL=0))
    if task.cancel.is_set():
        return None
    if not ok:
        raise RuntimeError("power flow did not converge")
    return {"converged": True, "vm_pu": result["bus"][:, 7].tolist(), "va_deg": result["bus"][:, 8].tolist(),
            "p_loss_mw": float((result["branch"][:, 13] + result["branch"][:, 15]).sum())}


RUNNERS = {"demo.hello_remote": run_hello, "demo.bytes_remote": run_bytes, "grid.power_flow_remote": run_power_flow}


class Service(pb2_grpc.AlgorithmServiceServicer):
    def __init__(self, token: str, broken: bool) -> None:
        self.token, self.broken = token, broken
        self.tasks: dict[str, Task] = {}
        self.by_client: dict[str, Task] = {}
        self.lock = threading.Lock()

    def _auth(self, context: grpc.ServicerContext) -> None:
        if self.token and dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing token")

    def _task(self, task_id: str, context: grpc.ServicerContext) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no task {task_id}")
        return task  # type: ignore[return-value]

    def GetAvailableSchemes(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._auth(context)
        offered = {**SCHEMES, **(BROKEN if self.broken else {})}
        return pb2.SchemesReply(schemes=[
            pb2.Scheme(name=name, version="1.0", description=s["description"],
                       params_schema_json=json.dumps(s["params_schema"])) for name, s in offered.items()])

    def SubmitTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._auth(context)
        if request.scheme not in RUNNERS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown scheme {request.scheme}")
        with self.lock:  # idempotent on client_task_id while that task has not failed or been cancelled
            known = self.by_client.get(request.client_task_id)
            if known is not None and known.progress.state not in (pb2.FAILED, pb2.CANCELLED):
                emit("attached", task_id=known.id, client_task_id=request.client_task_id)
                return pb2.SubmitReply(task_id=known.id, attached=True)
            task = Task(request.scheme, json.loads(request.params_json or "{}"), request.client_task_id)
            self.tasks[task.id] = self.by_client[request.client_task_id] = task
        emit("submitted", task_id=task.id, client_task_id=task.client_task_id, scheme=task.scheme)
        threading.Thread(target=self._run, args=(task,), daemon=True).start()
        return pb2.SubmitReply(task_id=task.id, attached=False)

    def _run(self, task: Task) -> None:
        try:
            out = RUNNERS[task.scheme](task)
        except Exception as exc:  # noqa: BLE001 - a failed task, reported to the watcher
            task.report(state=pb2.FAILED, error=f"{type(exc).__name__}: {exc}")
            emit("failed", task_id=task.id, error=str(exc))
            return
        if task.cancel.is_set():
            task.report(state=pb2.CANCELLED, percent=task.progress.percent)
            emit("cancelled", task_id=task.id, client_task_id=task.client_task_id)
        elif task.blob is not None:
            assert out is not None
            task.report(state=pb2.SUCCEEDED, percent=100.0, has_blob=True, blob_size=out["blob_size"],
                        blob_content_type="application/octet-stream", blob_sha256=out["blob_sha256"])
            emit("succeeded", task_id=task.id)
        else:
            task.report(state=pb2.SUCCEEDED, percent=100.0, result_json=json.dumps(out))
            emit("succeeded", task_id=task.id)

    def WatchTaskProgress(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._auth(context)
        task = self._task(request.task_id, context)
        last = None
        while context.is_active():
            with task.cond:
                if task.progress is last:
                    task.cond.wait(timeout=1.0)
                current = task.progress
            if current is not last:
                last = current
                yield current
                if task.final:
                    return

    def CancelTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._auth(context)
        task = self._task(request.task_id, context)
        emit("cancel_requested", task_id=task.id, client_task_id=task.client_task_id)
        task.cancel.set()
        return pb2.CancelReply(accepted=not task.final)

    def ReportResult(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._auth(context)
        task = self._task(request.task_id, context)
        if task.blob is None or task.progress.state != pb2.SUCCEEDED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no blob result for this task")
        offset = request.offset
        for data in task.blob(offset):  # type: ignore[misc]
            yield pb2.ResultChunk(data=data, offset=offset)
            offset += len(data)


def serve(port: int, token: str = "", broken: bool = False) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=[
        ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0)])
    pb2_grpc.add_AlgorithmServiceServicer_to_server(Service(token, broken), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--token", default="")
    parser.add_argument("--broken-scheme", action="store_true", help="also offer a scheme with an invalid schema")
    args = parser.parse_args()
    server, port = serve(args.port, args.token, args.broken_scheme)
    emit("listening", address=f"127.0.0.1:{port}")
    server.wait_for_termination()


if __name__ == "__main__":
    main()
