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
from channels.testing import HttpCommunicator
from rest_framework_simplejwt.tokens import AccessToken


def call(method: str, path: str, *, headers: dict[str, str], body: dict[str, Any] | None = None
         ) -> tuple[int, dict[str, str], Any, Counter[str]]:
    from config.asgi import application

    data = json.dumps(body).encode() if body is not None else b""
    sent = {"Host": "127.0.0.1", **headers, "Content-Length": str(len(data))}
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in sent.items()]
    handoffs: Counter[str] = Counter()
    to_thread, to_loop = sync.SyncToAsync.__call__, sync.AsyncToSync.__call__

    def counting_to_thread(self: Any, *args: Any, **kwargs: Any) -> Any:
        handoffs["sync_to_async"] += 1
        return to_thread(self, *args, **kwargs)

    def counting_to_loop(self: Any, *args: Any, **kwargs: Any) -> Any:
        handoffs["async_to_sync"] += 1
        return to_loop(self, *args, **kwargs)

    async def run() -> dict[str, Any]:
        comm = HttpCommunicator(application, method, path, body=data, headers=raw_headers)
        response = await comm.get_response(timeout=30)
        await comm.wait(5)  # the handler's end of the request (the response's close()) included
        return response

    sync.SyncToAsync.__call__, sync.AsyncToSync.__call__ = counting_to_thread, counting_to_loop
    try:
        response = asyncio.run(run())
    finally:
        sync.SyncToAsync.__call__, sync.AsyncToSync.__call__ = to_thread, to_loop
    response_headers = {k.decode().lower(): v.decode() for k, v in response["headers"]}
    return response["status"], response_headers, json.loads(response["body"]), handoffs


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
