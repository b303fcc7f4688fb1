"""The ASGI application runs Django's middleware chain and the (synchronous) views in one thread hop.

Django's own ``ASGIHandler`` loads the chain in async mode and, with this project's mix of sync-only
and sync-and-async middlewares, hands each request back and forth between the event loop and its
thread 21 times for a submit (``config/handlers.py``); at 16 concurrent requests one daphne process
served about half as many requests as with one handoff (docs/benchmarks.md). This sends real requests through ``config.asgi.application``
and counts the handoffs.
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from asgiref import sync
from asgiref.testing import ApplicationCommunicator
from rest_framework_simplejwt.tokens import AccessToken


def http_scope(method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in
                        {**headers, "Content-Length": str(len(body))}.items()],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


def call(method: str, path: str, *, headers: dict[str, str], body: dict[str, Any] | None = None
         ) -> tuple[int, dict[str, str], Any, Counter[str]]:
    from config.asgi import application

    data = json.dumps(body).encode() if body is not None else b""
    handoffs: Counter[str] = Counter()
    to_thread, to_loop = sync.SyncToAsync.__call__, sync.AsyncToSync.__call__

    def counting_to_thread(self: Any, *args: Any, **kwargs: Any) -> Any:
        handoffs["sync_to_async"] += 1
        return to_thread(self, *args, **kwargs)

    def counting_to_loop(self: Any, *args: Any, **kwargs: Any) -> Any:
        handoffs["async_to_sync"] += 1
        return to_loop(self, *args, **kwargs)

    async def run() -> tuple[dict[str, Any], bytes]:
        comm = ApplicationCommunicator(application, http_scope(method, path, headers, data))
        await comm.send_input({"type": "http.request", "body": data, "more_body": False})
        start = await comm.receive_output(30)
        chunks = []
        while True:
            message = await comm.receive_output(30)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await comm.wait(5)
        return start, b"".join(chunks)

    sync.SyncToAsync.__call__, sync.AsyncToSync.__call__ = counting_to_thread, counting_to_loop
    try:
        start, content = asyncio.run(run())
    finally:
        sync.SyncToAsync.__call__, sync.AsyncToSync.__call__ = to_thread, to_loop
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, json.loads(content), handoffs


@pytest.mark.django_db(transaction=True)
def test_a_submit_through_the_asgi_app_enters_the_request_thread_once(alice):
    headers = {"Authorization": f"Bearer {AccessToken.for_user(alice)}", "Content-Type": "application/json",
               "X-Request-ID": "asgi-handoffs-1"}
    status, response_headers, body, handoffs = call("POST", "/api/v1/tasks/", headers=headers,
                                                    body={"algorithm": "demo.noop"})
    assert status == 201, body
    assert body["status"] in ("PENDING", "QUEUED") and body["owner"] == "alice"
    assert response_headers["x-request-id"] == "asgi-handoffs-1"  # the whole chain ran
    # Into the thread for the chain and the view; the request signals' receivers and the response's
    # close() are Django's own handoffs around it. Never back to the loop in the middle of the chain.
    assert handoffs["async_to_sync"] == 0, handoffs
    assert handoffs["sync_to_async"] <= 3, handoffs


@pytest.mark.django_db(transaction=True)
def test_bad_input_through_the_asgi_app_is_a_json_400_naming_the_field(alice):
    headers = {"Authorization": f"Bearer {AccessToken.for_user(alice)}", "Content-Type": "application/json"}
    status, response_headers, body, _ = call("POST", "/api/v1/tasks/", headers=headers,
                                             body={"algorithm": "demo.noop", "priority": "urgent!"})
    assert status == 400 and response_headers["content-type"].startswith("application/json")
    assert "priority" in json.dumps(body)
