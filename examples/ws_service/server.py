"""Reference WebSocket + MsgPack compute service for Conveyor (a template for Julia/C++/Python servers).

    python examples/ws_service/server.py --port 8765 [--token SECRET]

One socket carries many tasks: every request has an ``id`` that its answers repeat. Frames are
one header byte (0x00 MsgPack, 0x01 Zstandard-compressed MsgPack) plus a MsgPack map; float64
arrays are MsgPack extension 1 ``[dtype.str, shape, raw bytes]``. The frame format is
``algorithms/remote/wire.py``; the protocol is in docs/remote.md. It offers ``simulate``: a seeded
random walk of ``n`` float64 values, returned inline (a MsgPack array) when small and as a ``.npy``
blob read in chunks when large. Each event is printed as one JSON line on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: for the frame format
from algorithms.remote import wire  # noqa: E402

INLINE_MAX = 64 * 1024
COMPRESS_OVER: int | None = wire.COMPRESS_OVER  # --zstd-over; None: never compress
SCHEMES = [{
    "name": "simulate",
    "version": "1.0",
    "description": "Seeded random walk of n float64 values (inline when small, a .npy blob when large).",
    "params_schema": {
        "type": "object", "additionalProperties": False,
        "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 200_000_000, "default": 1000},
                       "steps": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 5},
                       "delay": {"type": "number", "minimum": 0, "maximum": 60, "default": 0.02},
                       "seed": {"type": "integer", "default": 0}},
    },
}]


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def simulate_values(n: int, seed: int) -> np.ndarray:
    values = np.cumsum(np.random.default_rng(seed).standard_normal(n))
    values[: min(n, 4)] = [0.1, 1 / 3, 5e-324, 1.7976931348623157e308][: min(n, 4)]  # a lossy path changes these
    return values


class Task:
    def __init__(self, params: dict[str, Any], client_task_id: str) -> None:
        self.id = uuid.uuid4().hex
        self.params, self.client_task_id = params, client_task_id
        self.progress: dict[str, Any] = {"state": "RUNNING", "percent": 0.0, "stage": "", "message": ""}
        self.changed = asyncio.Event()
        self.cancel = asyncio.Event()
        self.blob: bytes | None = None

    @property
    def final(self) -> bool:
        return self.progress["state"] in ("SUCCEEDED", "FAILED", "CANCELLED")

    def report(self, **progress: Any) -> None:
        self.progress = progress
        self.changed.set()
        self.changed = asyncio.Event()


async def run_simulate(task: Task) -> None:
    p = {"n": 1000, "steps": 5, "delay": 0.02, "seed": 0, **task.params}
    for i in range(p["steps"]):
        try:
            await asyncio.wait_for(task.cancel.wait(), timeout=p["delay"])
        except TimeoutError:
            pass
        if task.cancel.is_set():
            task.report(state="CANCELLED", percent=task.progress["percent"])
            emit("cancelled", task_id=task.id, client_task_id=task.client_task_id)
            return
        task.report(state="RUNNING", percent=90.0 * (i + 1) / p["steps"], stage="simulating",
                    message=f"step {i + 1}/{p['steps']}",
                    metrics={"step": i + 1, "sent_at": time.time(), "residual": np.array([1.0 / (i + 1)])})
    values = await asyncio.to_thread(simulate_values, p["n"], p["seed"])
    if values.nbytes <= INLINE_MAX:
        task.report(state="SUCCEEDED", percent=100.0, result={"values": values, "n": p["n"]})
    else:
        buf = io.BytesIO()
        np.save(buf, values, allow_pickle=False)
        task.blob = buf.getvalue()
        task.report(state="SUCCEEDED", percent=100.0, blob={
            "size": len(task.blob), "content_type": "application/x-npy", "sha256": hashlib.sha256(task.blob).hexdigest()})
    emit("succeeded", task_id=task.id)


class Service:
    def __init__(self, token: str) -> None:
        self.token = token
        self.tasks: dict[str, Task] = {}
        self.by_client: dict[str, Task] = {}

    async def handle(self, ws: ServerConnection) -> None:
        if self.token and ws.request.headers.get("Authorization") != f"Bearer {self.token}":
            await ws.close(4401, "bad or missing token")
            return
        emit("connected")
        watchers: set[asyncio.Task[None]] = set()
        try:
            async for frame in ws:
                msg = wire.unpack(frame)
                if msg.get("op") == "watch":  # long-lived: runs beside the other requests on this socket
                    watcher = asyncio.create_task(self.watch(ws, msg))
                    watchers.add(watcher)
                    watcher.add_done_callback(watchers.discard)
                else:
                    await ws.send(wire.pack({"id": msg.get("id"), **self.answer(msg)}, compress_over=COMPRESS_OVER))
        except ConnectionClosed:
            pass
        finally:
            for watcher in watchers:
                watcher.cancel()

    def answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "schemes":
            return {"ok": True, "schemes": SCHEMES}
        if op == "submit":
            if msg.get("scheme") != "simulate":
                return {"ok": False, "code": "invalid", "error": f"unknown scheme {msg.get('scheme')!r}"}
            known = self.by_client.get(msg.get("client_task_id", ""))
            if known is not None and known.progress["state"] not in ("FAILED", "CANCELLED"):
                emit("attached", task_id=known.id, client_task_id=known.client_task_id)
                return {"ok": True, "task_id": known.id, "attached": True}
            task = Task(msg.get("params") or {}, msg.get("client_task_id", ""))
            self.tasks[task.id] = self.by_client[task.client_task_id] = task
            asyncio.get_running_loop().create_task(run_simulate(task))
            emit("submitted", task_id=task.id, client_task_id=task.client_task_id)
            return {"ok": True, "task_id": task.id, "attached": False}
        task = self.tasks.get(msg.get("task_id", ""))
        if task is None:
            return {"ok": False, "code": "not_found", "error": f"no task {msg.get('task_id')!r}"}
        if op == "cancel":
            emit("cancel_requested", task_id=task.id, client_task_id=task.client_task_id)
            task.cancel.set()
            return {"ok": True, "accepted": not task.final}
        if op == "read":
            if task.blob is None:
                return {"ok": False, "code": "invalid", "error": "no blob result for this task"}
            offset, length = int(msg.get("offset", 0)), int(msg.get("length", 1 << 22))
            data = task.blob[offset:offset + length]
            return {"ok": True, "data": data, "eof": offset + len(data) >= len(task.blob)}
        return {"ok": False, "code": "invalid", "error": f"unknown op {op!r}"}

    async def watch(self, ws: ServerConnection, msg: dict[str, Any]) -> None:
        task = self.tasks.get(msg.get("task_id", ""))
        if task is None:
            await ws.send(wire.pack({"id": msg["id"], "ok": False, "code": "not_found", "error": "no such task"}))
            return
        while True:
            changed = task.changed
            await ws.send(wire.pack({"id": msg["id"], "ok": True, "progress": task.progress}, compress_over=COMPRESS_OVER))
            if task.final:
                return
            await changed.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default="")
    parser.add_argument("--zstd-over", type=int, default=wire.COMPRESS_OVER,
                        help="compress frames larger than this many bytes; 0: never")
    args = parser.parse_args()
    global COMPRESS_OVER
    COMPRESS_OVER = args.zstd_over or None
    service = Service(args.token)
    async with serve(service.handle, "127.0.0.1", args.port, max_size=64 * 1024 * 1024, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        emit("listening", address=f"ws://127.0.0.1:{port}/")
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
