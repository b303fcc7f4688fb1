"""A tiny closed-loop HTTP/1.1 load generator (keep-alive, one request in flight per connection).

Hand-rolled on asyncio streams so the client spends as little of the shared CPU as possible; it only
understands ``Content-Length`` responses, which is what Django and daphne send.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of the 2xx answers only
    statuses: dict[int, int] = field(default_factory=dict)  # every answer, by status

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def request_bytes(method: str, path: str, body: dict | None, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: keep-alive",
             "Content-Type: application/json", f"Content-Length: {len(data)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _connection(port: int, payload: bytes, stop_at: float, record_from: float, result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            writer.write(payload)
            status = await _read_response(reader)
            end = time.perf_counter()
            if start >= record_from:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if 200 <= status < 300:  # an error answer is counted (statuses), never as throughput
                    result.latencies.append(end - start)
    finally:
        writer.close()


async def _run(port: int, payload: bytes, concurrency: int, seconds: float, warmup: float) -> LoadResult:
    now = time.perf_counter()
    result = LoadResult(concurrency=concurrency, seconds=seconds)
    await asyncio.gather(*[_connection(port, payload, now + warmup + seconds, now + warmup, result)
                           for _ in range(concurrency)])
    return result


def run(port: int, payload: bytes, *, concurrency: int, seconds: float, warmup: float = 1.0) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``warmup + seconds``; record only after the warmup."""
    return asyncio.run(_run(port, payload, concurrency, seconds, warmup))
