"""Real web processes (daphne, the production ASGI server) for the edge tests: readiness with a dead
database, rate limits shared by two processes, fuzzing over real HTTP. And the published OpenAPI schema
with its operations, for the tests that hold the server to it."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import ARTIFACTS, free_port, start_daphne, stop_daphne, subprocess_env


class WebProcess:
    def __init__(self, env: dict[str, str], name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / f"web-{name}-{os.getpid()}.log"
        self.proc = start_daphne(self.port, env, name=f"web-{name}")

    def stop(self) -> None:
        stop_daphne(self.proc)


@pytest.fixture
def web_process(transactional_db: None) -> Iterator[Callable[..., WebProcess]]:
    """``web_process(name, **env)`` → a daphne process on the pytest database (env overrides win)."""
    started: list[WebProcess] = []

    def start(name: str = "web", **overrides: str) -> WebProcess:
        web = WebProcess({**subprocess_env(), **overrides}, name)
        started.append(web)
        return web

    yield start
    for web in started:
        web.stop()


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    return free_port()


@pytest.fixture
def anon() -> Any:
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture(scope="module")
def schema(django_db_blocker: Any) -> dict[str, Any]:
    """The OpenAPI schema as ``GET /api/schema/?format=json`` publishes it."""
    from drf_spectacular.generators import SchemaGenerator

    with django_db_blocker.unblock():
        return json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str))


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every operation of ``schema``: (path, method, operation)."""
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield path, method, op
