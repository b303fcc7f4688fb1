"""Fixtures for queue tests: queues by name, a second live worker, helpers to read the queue."""
from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ARTIFACTS, LiveWorker


def make_queue(name: str, **fields: Any) -> Any:
    from queueing.models import Queue

    queue, _ = Queue.objects.get_or_create(name=name)
    for key, value in fields.items():
        setattr(queue, key, value)
    queue.save()
    return queue


class ExtraWorker(LiveWorker):
    """A second worker process (no embedded beat: the session worker already runs it)."""

    def __init__(self, env: dict[str, str], queues: str, concurrency: int, tag: str) -> None:
        super().__init__(env, queues=queues, concurrency=concurrency)
        self.log_path = ARTIFACTS / f"worker-{os.getpid()}-{tag}.log"
        self.tag = tag

    def new_hostname(self) -> str:
        return f"{self.tag}-{uuid.uuid4().hex[:6]}@localhost"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", self.queues,
                "-c", str(self.concurrency), "-n", self.hostname, "-l", "info", "--without-mingle", "--without-gossip"]

    def terminate(self, timeout: float = 30.0) -> None:
        """SIGTERM to the main process only, as Kubernetes and ``docker stop`` send it; wait for exit."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:  # it already exited (shutdown test)
            self.proc = None
        super().stop()


@pytest.fixture
def extra_worker(_worker_process: LiveWorker, transactional_db: None) -> Iterator[Any]:
    """``extra_worker(queues, concurrency)`` starts one more worker; all are stopped after the test."""
    started: list[ExtraWorker] = []

    def start(queues: str = "default", concurrency: int = 1, tag: str = "extra") -> ExtraWorker:
        worker = ExtraWorker(_worker_process.env, queues, concurrency, tag)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
