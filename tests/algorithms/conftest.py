"""A real web server for the download tests: daphne serving ``config.asgi`` on loopback, on the pytest
database, so streamed results go through the ASGI path (async iterator + daphne backpressure) that
the in-process test client never takes."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port, start_daphne, stop_daphne, subprocess_env


@pytest.fixture(scope="session")
def live_web(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    port = free_port()
    proc = start_daphne(port, subprocess_env())
    yield f"http://127.0.0.1:{port}"
    stop_daphne(proc)
