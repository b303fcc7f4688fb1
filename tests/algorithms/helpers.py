"""Submit-and-wait helpers shared by the algorithm tests (REST in, real worker, REST out)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import wait_until

FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def submit(client: Any, algorithm: str, params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    response = client.post("/api/v1/tasks/", {"algorithm": algorithm, "params": params or {}, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def wait_final(client: Any, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        body = client.get(f"/api/v1/tasks/{task_id}/").json()
        return body if body["status"] in FINAL else None

    return wait_until(final, timeout=timeout, interval=0.1, message=f"task {task_id} to finish")


def run(client: Any, algorithm: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Submit, wait, and insist it succeeded (showing the error and logs when it did not)."""
    task = wait_final(client, submit(client, algorithm, params)["id"], timeout=timeout)
    if task["status"] != "SUCCEEDED":
        logs = client.get(f"/api/v1/tasks/{task['id']}/logs/").json()
        raise AssertionError(f"{algorithm} ended {task['status']}: {task['error']}\n"
                             + "\n".join(str(e["data"]) for e in logs[-20:]))
    return task


def body(response: Any) -> bytes:
    return b"".join(response.streaming_content) if getattr(response, "streaming", False) else response.content


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return re.search(r"^State:\s+Z", status, re.M) is None
