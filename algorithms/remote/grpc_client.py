"""The gRPC backend: one long-lived channel per service (keep-alive pings), at most
``max_concurrent`` calls in flight, a deadline on every call, retries with backoff on UNAVAILABLE."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from algorithms.remote import client as c
from algorithms.remote.proto import load

pb2, pb2_grpc = load()

_STATES = {pb2.RUNNING: c.RUNNING, pb2.SUCCEEDED: c.SUCCEEDED, pb2.FAILED: c.FAILED, pb2.CANCELLED: c.CANCELLED}
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Reconnect quickly after a service restart (the default backoff grows to two minutes).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


def _error(exc: grpc.RpcError) -> c.RemoteError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.NOT_FOUND:
        return c.TaskGone(detail or "unknown task")
    if code in _TRANSIENT:
        return c.Unavailable(f"{code.name}: {detail}")
    return c.RemoteError(f"{code.name if code else 'error'}: {detail}")


def _json(text: str, name: str, empty: Any) -> Any:
    try:
        return json.loads(text) if text else empty
    except ValueError as exc:
        raise c.Malformed(f"malformed answer from the service: {name} is not JSON ({exc})") from None


def progress_from(msg: Any) -> c.Progress:
    """``c.Progress`` checks the decoded fields (metrics must be a JSON object)."""
    blob = c.Blob(size=msg.blob_size, content_type=msg.blob_content_type or "application/octet-stream",
                  sha256=msg.blob_sha256) if msg.has_blob else None
    return c.Progress(
        state=_STATES.get(msg.state, c.RUNNING), percent=msg.percent, stage=msg.stage, message=msg.message,
        metrics=_json(msg.metrics_json, "metrics_json", {}), error=msg.error,
        result=_json(msg.result_json, "result_json", None), blob=blob)


class _GrpcWatch:
    def __init__(self, owner: GrpcClient, remote_id: str, deadline: float | None) -> None:
        self._owner, self._remote_id, self._deadline = owner, remote_id, deadline
        self._call: Any = None
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[c.Progress]:
        with self._owner.slot():
            self._call = self._owner.stub.WatchTaskProgress(
                pb2.WatchRequest(task_id=self._remote_id), timeout=self._deadline, metadata=self._owner.metadata)
            if self._closed.is_set():
                self._call.cancel()
            try:
                for msg in self._call:
                    yield progress_from(msg)
            except grpc.RpcError as exc:
                if self._closed.is_set():
                    return
                raise _error(exc) from None
            finally:
                self._call.cancel()  # a malformed message (or the caller) ended the stream early

    def close(self) -> None:
        self._closed.set()
        if self._call is not None:
            self._call.cancel()


class GrpcClient:
    def __init__(self, address: str, *, tls: bool, token: str, connect_timeout: float, call_timeout: float,
                 max_concurrent: int) -> None:
        if tls:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(), options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb2_grpc.AlgorithmServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.connect_timeout, self.call_timeout = connect_timeout, call_timeout
        self._slots = threading.BoundedSemaphore(max(1, max_concurrent))

    def slot(self) -> Any:
        """Hold one of the service's concurrent-call slots (a context manager)."""
        if not self._slots.acquire(timeout=self.call_timeout):
            raise c.Unavailable("too many concurrent calls to this service")
        return _Release(self._slots)

    def _unary(self, method: str, request: Any, *, retry: bool = True) -> Any:
        def call() -> Any:
            with self.slot():
                try:
                    return getattr(self.stub, method)(request, timeout=self.call_timeout, metadata=self.metadata,
                                                      wait_for_ready=False)
                except grpc.RpcError as exc:
                    raise _error(exc) from None
        return c.retrying(call) if retry else call()

    def schemes(self) -> list[dict[str, Any]]:
        reply = self._unary("GetAvailableSchemes", pb2.SchemesRequest())
        out = []
        for s in reply.schemes:
            try:
                schema: Any = json.loads(s.params_schema_json) if s.params_schema_json else {"type": "object"}
            except ValueError as exc:
                schema = c.RemoteError(f"params_schema_json is not JSON: {exc}")
            out.append({"name": s.name, "version": s.version or "1.0", "description": s.description,
                        "params_schema": schema, "timeout_seconds": s.timeout_seconds or None})
        return out

    def submit(self, *, scheme: str, params: dict[str, Any], client_task_id: str, attempt: int) -> tuple[str, bool]:
        reply = self._unary("SubmitTask", pb2.SubmitRequest(scheme=scheme, params_json=json.dumps(params),
                                                            client_task_id=client_task_id, attempt=attempt))
        return reply.task_id, reply.attached

    def watch(self, remote_id: str, *, deadline: float | None = None) -> _GrpcWatch:
        return _GrpcWatch(self, remote_id, deadline)

    def cancel(self, remote_id: str) -> bool:
        return bool(self._unary("CancelTask", pb2.CancelRequest(task_id=remote_id)).accepted)

    def fetch(self, remote_id: str, *, offset: int = 0) -> Iterator[bytes]:
        with self.slot():
            # The transfer's deadline grows with its size; 10 minutes covers gigabytes on a LAN.
            call = self.stub.ReportResult(pb2.ResultRequest(task_id=remote_id, offset=offset),
                                          timeout=max(600.0, self.call_timeout), metadata=self.metadata)
            try:
                for chunk in call:
                    yield chunk.data
            except grpc.RpcError as exc:
                raise _error(exc) from None
            finally:
                call.cancel()

    def ping(self) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.connect_timeout)
        except grpc.FutureTimeoutError:
            raise c.Unavailable("no connection") from None
        self._unary("GetAvailableSchemes", pb2.SchemesRequest(), retry=False)

    def close(self) -> None:
        self.channel.close()


class _Release:
    def __init__(self, sem: threading.BoundedSemaphore) -> None:
        self._sem = sem

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._sem.release()
