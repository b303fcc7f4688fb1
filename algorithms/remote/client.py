"""What Conveyor needs from a remote service, whatever it speaks, and one client per service and process.

Both backends raise ``Unavailable`` for anything that may pass (connection refused, reset, deadline),
``TaskGone`` when the service no longer knows a task id, ``RemoteError`` for an answer that says no, and
``Malformed`` (a ``RemoteError``) for an answer that lacks a field or has one of the wrong type.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from algorithms.remote.models import RemoteService


class RemoteError(Exception):
    """The service answered, and the answer is an error (bad request, refused, failed)."""


class Unavailable(RemoteError):
    """The service cannot be reached right now; trying again later may work."""


class TaskGone(RemoteError):
    """The service does not know this task id (it restarted, or forgot it)."""


class Malformed(RemoteError):
    """The service answered, but not as the protocol says: a field is missing or of the wrong type. Its
    task fails at once: the same service would answer the same way again (``jobs.runner``)."""

    retryable = False


def checked(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    """``value`` if it is a ``kind`` (a bool is no number); else ``Malformed`` naming the field."""
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
        kinds = " or ".join(k.__name__ for k in _tuple(kind))
        raise Malformed(f"malformed answer from the service: {name} is {type(value).__name__} {_clip(value)}, "
                        f"expected {kinds}")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


RUNNING, SUCCEEDED, FAILED, CANCELLED = "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
FINAL_STATES = {SUCCEEDED, FAILED, CANCELLED}


@dataclass(frozen=True)
class Blob:
    """A result to fetch in chunks."""

    size: int
    content_type: str = "application/octet-stream"
    sha256: str = ""

    def __post_init__(self) -> None:
        if checked(self.size, int, "blob.size") < 0:
            raise Malformed(f"malformed answer from the service: blob.size is negative ({self.size})")
        checked(self.content_type, str, "blob.content_type")
        checked(self.sha256, str, "blob.sha256")


@dataclass(frozen=True)
class Progress:
    state: str
    percent: float = 0.0
    stage: str = ""
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    result: Any = None  # SUCCEEDED with an inline (JSON) result
    blob: Blob | None = None  # SUCCEEDED with a result to fetch

    def __post_init__(self) -> None:
        """Whatever a backend decoded is checked here, so a malformed message fails as ``Malformed``."""
        checked(self.state, str, "progress.state")
        checked(self.percent, (int, float), "progress.percent")
        for name in ("stage", "message", "error"):
            checked(getattr(self, name), str, f"progress.{name}")
        checked(self.metrics, dict, "progress.metrics")
        checked(self.blob, (Blob, type(None)), "progress.blob")

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class Watch(Protocol):
    """A progress stream; ``close()`` may be called from another thread to end it early."""

    def __iter__(self) -> Iterator[Progress]: ...

    def close(self) -> None: ...


class Client(Protocol):
    def schemes(self) -> list[dict[str, Any]]:
        """``[{name, version, description, params_schema, timeout_seconds}]`` as the service offers them."""

    def submit(self, *, scheme: str, params: dict[str, Any], client_task_id: str, attempt: int) -> tuple[str, bool]:
        """``(remote_id, attached)``; attached when the service already ran ``client_task_id``."""

    def watch(self, remote_id: str, *, deadline: float | None = None) -> Watch: ...

    def cancel(self, remote_id: str) -> bool: ...

    def fetch(self, remote_id: str, *, offset: int = 0) -> Iterator[bytes]: ...

    def ping(self) -> None:
        """Raise ``Unavailable`` unless the service answers (the health check)."""

    def close(self) -> None: ...


_clients: dict[str, tuple[tuple[Any, ...], Client]] = {}
_lock = threading.Lock()


def _identity(service: RemoteService) -> tuple[Any, ...]:
    return (service.kind, service.address, service.tls, service.auth_token, service.connect_timeout,
            service.call_timeout, service.max_concurrent_calls)


def client_for(service: RemoteService) -> Client:
    """The process's client for ``service`` (channels and sockets are long-lived); rebuilt when an
    operator changes its address or settings. Created lazily, so never inherited across a fork."""
    key = _identity(service)
    with _lock:
        known = _clients.get(service.name)
        if known is not None and known[0] == key:
            return known[1]
        if known is not None:
            known[1].close()
        client = _build(service)
        _clients[service.name] = (key, client)
        return client


def _build(service: RemoteService) -> Client:
    if service.kind == "grpc":
        from algorithms.remote.grpc_client import GrpcClient

        return GrpcClient(service.address, tls=service.tls, token=service.auth_token,
                          connect_timeout=service.connect_timeout, call_timeout=service.call_timeout,
                          max_concurrent=service.max_concurrent_calls)
    if service.kind == "ws":
        from algorithms.remote.ws_client import WsClient

        return WsClient(service.address, token=service.auth_token, connect_timeout=service.connect_timeout,
                        call_timeout=service.call_timeout)
    raise RemoteError(f"unknown service kind {service.kind!r}")


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Exponential: base·2^attempt, capped."""
    return min(cap, base * (2 ** attempt))


def retrying(fn: Any, *, tries: int = 4, base: float = 0.2, cap: float = 2.0) -> Any:
    """Call ``fn()``; on ``Unavailable`` try again with exponential backoff, ``tries`` times in all."""
    for attempt in range(tries):
        try:
            return fn()
        except Unavailable:
            if attempt == tries - 1:
                raise
            time.sleep(backoff(attempt, base=base, cap=cap))
    raise AssertionError("unreachable")
