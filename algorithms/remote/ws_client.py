"""The WebSocket + MsgPack backend: one persistent connection per service and process, shared by
every task through request ids; a reader thread routes answers; reconnect with backoff.

A lost connection fails every request in flight with ``Unavailable``; the bridge then waits and
watches its remote task again on the new connection (the service keeps running it). A frame the
reader cannot route (not MsgPack, not a map, no integer ``id``) is logged and skipped; an answer with a
missing or mistyped field fails its request with ``Malformed``.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from algorithms.remote import client as c
from algorithms.remote import wire

log = logging.getLogger(__name__)

READ_CHUNK = 4 * 1024 * 1024
_LOST = object()


class _Watch:
    def __init__(self, owner: WsClient, remote_id: str, deadline: float | None) -> None:
        self._owner, self._remote_id, self._deadline = owner, remote_id, deadline
        self._rid: int | None = None
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[c.Progress]:
        rid, answers = self._owner.open_request({"op": "watch", "task_id": self._remote_id})
        self._rid = rid
        end = time.monotonic() + (self._deadline or 86400.0)
        try:
            while not self._closed.is_set():
                try:
                    msg = answers.get(timeout=0.1)
                except queue.Empty:
                    if time.monotonic() > end:
                        raise c.Unavailable("watch deadline passed") from None
                    continue
                _raise_for(msg)
                progress = _progress(c.checked(msg.get("progress"), dict, "progress"))
                yield progress
                if progress.final:
                    return
        finally:
            self._owner.close_request(rid)

    def close(self) -> None:
        self._closed.set()


def _raise_for(msg: Any) -> None:
    if msg is _LOST:
        raise c.Unavailable("connection to the service was lost")
    if msg.get("ok") is False:
        if msg.get("code") == "not_found":
            raise c.TaskGone(msg.get("error") or "unknown task")
        raise c.RemoteError(msg.get("error") or "the service refused the request")


def _progress(p: dict[str, Any]) -> c.Progress:
    """``c.Progress`` checks each field's type (``Malformed`` names the bad one)."""
    blob = c.checked(p.get("blob") or {}, dict, "progress.blob")
    return c.Progress(
        state=p.get("state", c.RUNNING), percent=p.get("percent") or 0.0, stage=p.get("stage") or "",
        message=p.get("message") or "", metrics=wire.jsonable(p.get("metrics") or {}), error=p.get("error") or "",
        result=wire.jsonable(p.get("result")),
        blob=c.Blob(size=blob.get("size"), content_type=blob.get("content_type") or "application/octet-stream",
                    sha256=blob.get("sha256") or "") if blob else None)


class WsClient:
    def __init__(self, address: str, *, token: str, connect_timeout: float, call_timeout: float) -> None:
        self.address, self.token = address, token
        self.connect_timeout, self.call_timeout = connect_timeout, call_timeout
        self._conn: ClientConnection | None = None
        self._lock = threading.Lock()  # connect and send
        self._pending: dict[int, queue.Queue[Any]] = {}
        self._ids = itertools.count(1)
        self._failures = 0
        self._retry_at = 0.0

    # --- the connection -------------------------------------------------------------------
    def _connection(self) -> ClientConnection:
        if self._conn is not None:
            return self._conn
        if time.monotonic() < self._retry_at:
            raise c.Unavailable("reconnecting (backing off)")
        try:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            conn = connect(self.address, additional_headers=headers, open_timeout=self.connect_timeout,
                           max_size=64 * 1024 * 1024, compression=None, proxy=None, legacy=True)
        except (OSError, WebSocketException, TimeoutError) as exc:
            self._failures += 1
            self._retry_at = time.monotonic() + c.backoff(self._failures - 1, base=0.2, cap=10.0)
            raise c.Unavailable(f"cannot connect to {self.address}: {exc}") from None
        self._failures, self._conn = 0, conn
        threading.Thread(target=self._read, args=(conn,), name=f"ws-reader-{self.address}", daemon=True).start()
        return conn

    def _read(self, conn: ClientConnection) -> None:
        try:
            for frame in conn:
                self._route(frame)
        except (OSError, WebSocketException):
            pass  # the connection is gone
        except Exception:  # noqa: BLE001 - whatever stops this thread, the connection must close with it
            log.exception("reading from %s failed", self.address)
        finally:
            # Close it (its own threads end with it), so a reconnect never leaves a socket behind.
            conn.close()
            with self._lock:
                if self._conn is conn:
                    self._conn = None
            for answers in list(self._pending.values()):
                answers.put(_LOST)

    def _route(self, frame: bytes | str) -> None:
        """Hand one answer to the request waiting for it; a frame that cannot be routed is skipped
        (its request, if any, times out), so one bad frame never ends the shared connection."""
        try:
            msg = wire.unpack(frame if isinstance(frame, bytes) else frame.encode())
        except Exception as exc:  # noqa: BLE001 - msgpack, zstd and the ndarray hook raise many kinds
            log.warning("skipped an undecodable frame from %s: %r", self.address, exc)
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("id"), int):
            log.warning("skipped a frame from %s that is not a map with an integer id: %.200r", self.address, msg)
            return
        answers = self._pending.get(msg["id"])
        if answers is not None:  # else: an answer nobody waits for any more
            answers.put(msg)

    def open_request(self, msg: dict[str, Any]) -> tuple[int, queue.Queue[Any]]:
        rid = next(self._ids)
        answers: queue.Queue[Any] = queue.Queue()
        self._pending[rid] = answers
        try:
            with self._lock:
                self._connection().send(wire.pack({**msg, "id": rid}))
        except (OSError, WebSocketException) as exc:
            self.close_request(rid)
            raise c.Unavailable(f"send failed: {exc}") from None
        except BaseException:
            self.close_request(rid)
            raise
        return rid, answers

    def close_request(self, rid: int) -> None:
        self._pending.pop(rid, None)

    def call(self, msg: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        rid, answers = self.open_request(msg)
        try:
            answer = answers.get(timeout=timeout or self.call_timeout)
        except queue.Empty:
            raise c.Unavailable(f"no answer to {msg['op']} within {timeout or self.call_timeout:g}s") from None
        finally:
            self.close_request(rid)
        _raise_for(answer)
        return answer

    # --- the client protocol -------------------------------------------------------------------
    def schemes(self) -> list[dict[str, Any]]:
        answer = c.retrying(lambda: self.call({"op": "schemes"}))
        offered = [c.checked(s, dict, f"schemes[{i}]")
                   for i, s in enumerate(c.checked(answer.get("schemes"), list, "schemes"))]
        return [{"name": s.get("name"), "version": s.get("version") or "1.0", "description": s.get("description") or "",
                 "params_schema": s.get("params_schema", {"type": "object"}),
                 "timeout_seconds": s.get("timeout_seconds") or None} for s in offered]

    def submit(self, *, scheme: str, params: dict[str, Any], client_task_id: str, attempt: int) -> tuple[str, bool]:
        answer = c.retrying(lambda: self.call({"op": "submit", "scheme": scheme, "params": params,
                                               "client_task_id": client_task_id, "attempt": attempt}))
        return str(c.checked(answer.get("task_id"), (str, int), "task_id")), bool(answer.get("attached"))

    def watch(self, remote_id: str, *, deadline: float | None = None) -> _Watch:
        return _Watch(self, remote_id, deadline)

    def cancel(self, remote_id: str) -> bool:
        return bool(c.retrying(lambda: self.call({"op": "cancel", "task_id": remote_id})).get("accepted"))

    def fetch(self, remote_id: str, *, offset: int = 0) -> Iterator[bytes]:
        """Sequential ``read`` requests of 4 MiB: flow control comes free, and any offset resumes."""
        while True:
            answer = self.call({"op": "read", "task_id": remote_id, "offset": offset, "length": READ_CHUNK})
            data = c.checked(answer.get("data") or b"", bytes, "data")
            if data:
                yield data
                offset += len(data)
            if answer.get("eof") or not data:
                return

    def ping(self) -> None:
        self.call({"op": "ping"}, timeout=self.connect_timeout)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
