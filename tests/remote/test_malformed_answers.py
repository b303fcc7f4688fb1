"""A remote service that answers out of protocol: one bad frame or field never leaks a connection, stops
discovery of the other services, or fails a task with an internal-looking error; a result stream
longer than announced is stopped at once."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest
from django.contrib.auth.models import User
from django.test import Client
from websockets.sync.server import serve

from algorithms.remote import client as c
from algorithms.remote import wire
from tests.conftest import unconsumed_queue, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

Answer = Callable[[dict[str, Any]], list[bytes]]


def ok(msg: dict[str, Any], **fields: Any) -> bytes:
    return wire.pack({"id": msg["id"], "ok": True, **fields})


@contextmanager
def ws_service(answer: Answer) -> Iterator[tuple[str, list[Any]]]:
    """A WebSocket service on loopback that sends ``answer(request)``; yields its address and the
    server side of every connection made to it."""
    conns: list[Any] = []

    def handler(ws: Any) -> None:
        conns.append(ws)
        for frame in ws:
            for out in answer(wire.unpack(frame)):
                ws.send(out)

    server = serve(handler, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/", conns
    finally:
        server.shutdown()


def ws_client(address: str) -> Any:
    from algorithms.remote.ws_client import WsClient

    return WsClient(address, token="", connect_timeout=2.0, call_timeout=1.0)


# --- 1. the reader thread and its connection ------------------------------------------------------------
def test_frames_that_cannot_be_routed_are_skipped_on_the_same_connection():
    def answer(msg: dict[str, Any]) -> list[bytes]:
        return [wire.PLAIN + msgpack.packb([1, 2]),           # not a map
                wire.pack({"id": [msg["id"]], "ok": True}),   # an id that is not an integer
                b"\x07garbage",                               # not a frame at all
                ok(msg)]

    with ws_service(answer) as (address, conns):
        client = ws_client(address)
        for _ in range(3):
            client.ping()
        client.close()

    assert len(conns) == 1


def test_a_reader_that_stops_closes_its_connection(monkeypatch):
    from algorithms.remote.ws_client import WsClient

    def boom(self: Any, frame: Any) -> None:
        raise RuntimeError("a bug in the reader")

    with ws_service(lambda msg: [ok(msg)]) as (address, conns):
        client = ws_client(address)
        monkeypatch.setattr(WsClient, "_route", boom, raising=False)
        with pytest.raises(c.Unavailable):
            client.ping()
        wait_until(lambda: conns[0].state.name == "CLOSED", timeout=10, message="the connection to close")
        monkeypatch.undo()
        client._retry_at = 0.0
        client.ping()  # a fresh connection
        client.close()

    assert len(conns) == 2


# --- 2. discovery ------------------------------------------------------------------------------------
@pytest.mark.parametrize("schemes, field", [
    (None, "schemes is NoneType"),
    ("simulate", "schemes is str"),
    ([["simulate"]], "schemes[0] is list"),
])
def test_malformed_schemes_answer_is_a_discovery_error_naming_the_field(schemes, field):
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    fields = {} if schemes is None else {"schemes": schemes}
    with ws_service(lambda msg: [ok(msg, **fields)]) as (address, _):
        service = RemoteService.objects.create(name="odd", kind="ws", address=address, call_timeout=1.0)
        report = discovery.refresh(service)

    assert report.accepted == [] and field in report.error
    assert field in RemoteService.objects.get(name="odd").discovery_error


def test_a_scheme_with_fields_of_the_wrong_type_is_rejected_and_the_rest_kept():
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    schemes = [{"name": 7}, {"name": "odd.version", "version": 2}, {"name": "odd.timeout", "timeout_seconds": "1h"},
               {"name": "odd.fine", "params_schema": {"type": "object"}}]
    with ws_service(lambda msg: [ok(msg, schemes=schemes)]) as (address, _):
        service = RemoteService.objects.create(name="odd", kind="ws", address=address, call_timeout=1.0)
        report = discovery.refresh(service)

    assert report.accepted == ["odd.fine"]
    assert set(report.rejected) == {"7", "odd.version", "odd.timeout"}


def test_one_malformed_service_does_not_stop_discovery_of_the_others(monkeypatch):
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    with ws_service(lambda msg: [ok(msg)]) as (address, _):
        RemoteService.objects.create(name="a-malformed", kind="ws", address=address, call_timeout=1.0)
        RemoteService.objects.create(name="b-broken", kind="ws", address=address, call_timeout=1.0)
        RemoteService.objects.create(name="c-down", kind="ws", address="ws://127.0.0.1:1/", connect_timeout=0.5)
        real = discovery.refresh
        monkeypatch.setattr(discovery, "refresh", lambda s: 1 / 0 if s.name == "b-broken" else real(s))
        reports = {r.service: r.error for r in discovery.refresh_all()}

    assert "schemes is NoneType" in reports["a-malformed"]
    assert "ZeroDivisionError" in reports["b-broken"]
    assert "cannot connect" in reports["c-down"]
    assert "cannot connect" in RemoteService.objects.get(name="c-down").discovery_error


def test_one_service_whose_check_breaks_does_not_stop_the_health_checks_of_the_others(monkeypatch):
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    with ws_service(lambda msg: [ok(msg)]) as (address, _):
        RemoteService.objects.create(name="a-broken", kind="ws", address=address, call_timeout=1.0)
        RemoteService.objects.create(name="b-fine", kind="ws", address=address, call_timeout=1.0)
        real = c.client_for
        monkeypatch.setattr(c, "client_for", lambda s: 1 / 0 if s.name == "a-broken" else real(s))
        checked = discovery.check_all()

    assert checked == {"a-broken": False, "b-fine": True}
    assert "ZeroDivisionError" in RemoteService.objects.get(name="a-broken").health_error


def test_admin_discover_now_shows_a_malformed_answer_as_an_error():
    from algorithms.remote.models import RemoteService

    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    browser = Client()
    browser.force_login(admin)
    with ws_service(lambda msg: [ok(msg, schemes=[1])]) as (address, _):
        service = RemoteService.objects.create(name="odd", kind="ws", address=address, call_timeout=1.0)
        response = browser.post("/admin/algorithms/remoteservice/",
                                {"action": "discover_now", "_selected_action": [service.pk]}, follow=True)

    assert response.status_code == 200
    assert "schemes[0] is int" in response.content.decode()


# --- 3. progress ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("progress, field", [
    (None, "progress is NoneType"),
    ({"percent": "50%"}, "progress.percent is str"),
    ({"stage": 7}, "progress.stage is int"),
    ({"metrics": [1, 2]}, "progress.metrics is list"),
    ({"state": "SUCCEEDED", "blob": {"size": "big"}}, "blob.size is str"),
    ({"state": "SUCCEEDED", "blob": {"size": -1}}, "blob.size is negative"),
    ({"state": "SUCCEEDED", "blob": 5}, "progress.blob is int"),
])
def test_malformed_ws_progress_is_a_remote_error_naming_the_field(progress, field):
    fields = {} if progress is None else {"progress": progress}
    with ws_service(lambda msg: [ok(msg, **fields)]) as (address, _):
        client = ws_client(address)
        with pytest.raises(c.Malformed, match=field.replace("[", r"\[")):
            list(client.watch("r-1"))
        client.close()


@pytest.mark.parametrize("fields, field", [
    ({"metrics_json": "not json"}, "metrics_json is not JSON"),
    ({"metrics_json": "[1, 2]"}, "progress.metrics is list"),
    ({"result_json": "{", "state": 2}, "result_json is not JSON"),
    ({"has_blob": True, "blob_size": -5}, "blob.size is negative"),
])
def test_malformed_grpc_progress_is_a_remote_error_naming_the_field(fields, field):
    from algorithms.remote.grpc_client import pb2, progress_from

    with pytest.raises(c.Malformed, match=field):
        progress_from(pb2.Progress(**fields))


def test_malformed_fetch_data_is_a_remote_error():
    with ws_service(lambda msg: [ok(msg, data="text", eof=True)]) as (address, _):
        client = ws_client(address)
        with pytest.raises(c.Malformed, match="data is str"):
            list(client.fetch("r-1"))
        client.close()


# --- 5. a result stream longer than announced ------------------------------------------------------------
class OversizedResult:
    """Announces a 10-byte blob, then streams megabytes."""

    def __init__(self) -> None:
        self.sent = 0

    def submit(self, **kw: Any) -> tuple[str, bool]:
        return "r-1", False

    def watch(self, remote_id: str, *, deadline: float | None = None) -> Any:
        return _Finished([c.Progress(state=c.SUCCEEDED, blob=c.Blob(size=10))])

    def cancel(self, remote_id: str) -> bool:
        return True

    def fetch(self, remote_id: str, *, offset: int = 0) -> Iterator[bytes]:
        for _ in range(50):
            self.sent += 1
            yield b"x" * (1 << 20)


class _Finished(list):
    def close(self) -> None:
        pass


def test_a_result_longer_than_announced_is_stopped_at_the_first_chunk_past_it(alice, monkeypatch):
    from algorithms.models import Artifact
    from algorithms.remote.models import RemoteService
    from jobs import execution, runner, services
    from jobs.models import Status, Task

    RemoteService.objects.create(name="fake", kind="grpc", address="127.0.0.1:1",
                                 schemes=[{"name": "fake.s", "params_schema": {"type": "object"}}])
    fake = OversizedResult()
    monkeypatch.setattr(c, "client_for", lambda service: fake)
    spec = services.build_spec(algorithm="fake.s", params={}, queue=unconsumed_queue(), max_retries=0)
    task, _ = services.submit(owner=alice, spec=spec)
    Task.objects.filter(id=task.id).update(status=Status.QUEUED)

    outcome = runner.run(execution.claim(task_id=task.id, worker="w-1"))

    assert outcome.status == Status.FAILED and "larger than the announced 10 bytes" in outcome.error
    assert fake.sent == 1
    assert not Artifact.objects.filter(task_id=task.id).exists()
