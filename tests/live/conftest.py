"""Fixtures for the live tier: JWTs, WebSocket communicators on the real Redis channel layer."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from rest_framework.test import APIClient

from tests.conftest import PASSWORD

FINAL_EVENTS = {"task.succeeded", "task.failed", "task.cancelled", "task.timed_out"}


@pytest.fixture
def token() -> Callable[[Any], str]:
    """``token(alice)`` → an access JWT from the real token endpoint."""

    def make(user: Any) -> str:
        response = APIClient().post("/api/v1/auth/token/", {"username": user.username, "password": PASSWORD},
                                    format="json")
        assert response.status_code == 200, response.content
        return response.json()["access"]

    return make


def communicator(path: str) -> WebsocketCommunicator:
    from config.asgi import application

    return WebsocketCommunicator(application, path)


async def receive_until(comm: WebsocketCommunicator, stop: Callable[[dict[str, Any]], bool],
                        *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every JSON message up to and including the first one for which ``stop`` is true."""
    got: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            pytest.fail(f"no stop message within {timeout}s; got {[m.get('event') for m in got]}")
        message = await comm.receive_output(timeout=remaining)
        if message["type"] == "websocket.close":
            pytest.fail(f"socket closed ({message.get('code')}) after {[m.get('event') for m in got]}")
        body = json.loads(message["text"])
        got.append(body)
        if stop(body):
            return got


def task_events(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("event", "").startswith("task.") and m["event"] != "task.snapshot"]
