"""Reference remote services as real processes on loopback, and their registration.

``grpc_service`` runs ``examples/grpc_service/server.py``; ``ws_service`` runs
``examples/ws_service/server.py``. Both keep their port across ``kill()``/``start()``, so a test
can take a service down and bring it back, and both log one JSON line per event (``events()``).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ARTIFACTS, ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    def __init__(self, script: str, *args: str) -> None:
        self.script, self.args = ROOT / script, list(args)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{Path(script).parent.name}-{os.getpid()}-{self.port}.log"
        self.log_path.write_bytes(b"")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        mark = len(self.events())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(self.script), "--port", str(self.port), *self.args],
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not any(e.get("event") == "listening" for e in self.events()[mark:]):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.script} did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                out.append(event)
        return out


@pytest.fixture
def grpc_service() -> Iterator[ServiceProcess]:
    service = ServiceProcess("examples/grpc_service/server.py")
    service.start()
    yield service
    service.kill()


@pytest.fixture
def ws_service() -> Iterator[ServiceProcess]:
    service = ServiceProcess("examples/ws_service/server.py")
    service.start()
    yield service
    service.kill()


def register(name: str, kind: str, address: str, **extra: Any) -> Any:
    """What an operator does: add the service, then discovery fills its scheme cache."""
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    service = RemoteService.objects.create(name=name, kind=kind, address=address, call_timeout=5.0,
                                           connect_timeout=2.0, **extra)
    report = discovery.refresh(service)
    service.refresh_from_db()
    return service, report


def load_example(script: str, name: str) -> Any:
    """Import a reference service's module by path (both are called server.py)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
