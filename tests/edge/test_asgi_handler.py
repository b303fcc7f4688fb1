"""The ASGI application runs Django's middleware chain and the (synchronous) views in one thread hop,
in request threads that later requests use again.

Django's own ``ASGIHandler`` loads the chain in async mode and, with this project's mix of sync-only
and sync-and-async middlewares, hands each request back and forth between the event loop and its
thread 21 times for a submit (``config/handlers.py``); at 16 concurrent requests one daphne process
served about half as many requests as with one handoff (docs/benchmarks.md). This sends real requests through ``config.asgi.application``
and counts the handoffs.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any

import pytest
from asgiref import sync
from channels.testing import HttpCommunicator
from django.core.signals import request_finished, request_started
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


def _threads_of(requests: int, *, started: Any = None) -> tuple[list[int], list[int]]:
    """Send ``requests`` GET /health/ at once through the app: the threads that ran their
    ``request_started`` receivers, and those that ran their ``request_finished`` (the response's close)."""
    from config.asgi import application

    seen: dict[str, list[int]] = {"started": [], "finished": []}

    def on_started(**kwargs: Any) -> None:
        seen["started"].append(threading.get_ident())
        if started is not None:
            started()

    def on_finished(**kwargs: Any) -> None:
        seen["finished"].append(threading.get_ident())

    async def run() -> None:
        comms = [HttpCommunicator(application, "GET", "/health/", headers=[(b"host", b"127.0.0.1")])
                 for _ in range(requests)]
        responses = await asyncio.gather(*(c.get_response(timeout=30) for c in comms))
        assert [r["status"] for r in responses] == [200] * requests
        for comm in comms:
            await comm.wait(5)

    request_started.connect(on_started, dispatch_uid="test-threads-started")
    request_finished.connect(on_finished, dispatch_uid="test-threads-finished")
    try:
        asyncio.run(run())
    finally:
        request_started.disconnect(dispatch_uid="test-threads-started")
        request_finished.disconnect(dispatch_uid="test-threads-finished")
    return seen["started"], seen["finished"]


@pytest.mark.django_db(transaction=True)
def test_one_request_after_another_runs_in_the_same_request_thread():
    # Django's own handler starts a thread per request: whatever libraries keep per thread (Celery's
    # result backend, Django's database wrapper) was built again for every request.
    first, second, third = (_threads_of(1) for _ in range(3))
    assert first[0] == first[1]  # a request's synchronous parts share its thread
    assert first == second == third


@pytest.mark.django_db(transaction=True)
def test_requests_at_the_same_time_each_get_a_thread_of_their_own():
    # Each request's started-receiver waits until all three are inside one at once: impossible if two
    # of them had to share a thread (the barrier would time out).
    barrier = threading.Barrier(3, timeout=10)
    started, finished = _threads_of(3, started=barrier.wait)
    assert len(set(started)) == 3 and set(finished) == set(started)


def test_a_thread_still_running_an_abandoned_request_is_not_given_to_the_next_one():
    from config.handlers import RequestThread, SyncChainASGIHandler

    handler = SyncChainASGIHandler()
    release = threading.Event()
    busy, done = RequestThread(), RequestThread()
    busy.submit(release.wait, 10)  # the view of a request whose client went away, still running
    done.submit(lambda: None).result()
    handler.park(busy)
    handler.park(done)
    assert handler._idle == [done]  # the next request gets the free thread, never the busy one
    release.set()
    busy.shutdown(wait=True)  # the busy one finishes its work and stops
    done.shutdown(wait=True)
