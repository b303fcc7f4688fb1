"""What a socket refuses and when it ends: malformed messages and queries close it with the documented
code (never a crash), and a user deactivated or demoted loses the stream within ``WS_RECHECK_SECONDS``.

Real Redis channel layer and PostgreSQL; the consumers run in-process under ``WebsocketCommunicator``.
"""
from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async

from jobs import services
from jobs.models import Task
from tests.live.conftest import communicator
from tests.queueing.conftest import make_queue

pytestmark = [pytest.mark.django_db(transaction=True)]

CLOSED_4400 = {"type": "websocket.close", "code": 4400}
CLOSED_4401 = {"type": "websocket.close", "code": 4401}
CLOSED_4403 = {"type": "websocket.close", "code": 4403}


def submit(owner) -> Task:
    """A task that stays PENDING (its queue is paused), whatever workers run in this session."""
    make_queue("held", paused=True)
    spec = services.build_spec(algorithm="demo.noop", queue="held")
    task, _ = services.submit(owner=owner, spec=spec, idempotency_key=None)
    return task


async def next_close(comm, timeout: float = 5.0) -> dict:
    """Skip data messages; the close that follows them."""
    while True:
        message = await comm.receive_output(timeout=timeout)
        if message["type"] == "websocket.close":
            return message


@pytest.mark.parametrize("first", ['{"type": "auth", "token": 123}', '{"type": "auth", "token": ["x"]}',
                                   '{"type": "auth", "token": {"a": 1}}', '["x"]', '{"a": 1}',
                                   "[" * 50_000 + "]" * 50_000])
def test_a_malformed_first_message_closes_4401(alice, first):
    task = submit(alice)

    async def scenario():
        comm = communicator(f"/ws/tasks/{task.id}/")
        await comm.connect()
        await comm.send_to(text_data=first)
        return await comm.receive_output(timeout=5)

    assert async_to_sync(scenario)() == CLOSED_4401


def test_a_message_nested_too_deep_after_auth_is_ignored(alice, token):
    task, jwt = submit(alice), token(alice)

    async def scenario():
        comm = communicator(f"/ws/tasks/{task.id}/?token={jwt}")
        await comm.connect()
        await comm.receive_json_from(timeout=5)  # the snapshot
        await comm.send_to(text_data="[" * 50_000 + "]" * 50_000)
        await comm.send_json_to({"type": "ping"})
        answer = await comm.receive_json_from(timeout=5)
        await comm.disconnect()
        return answer

    assert async_to_sync(scenario)()["event"] == "pong"


@pytest.mark.parametrize("value", ["abc", "1.5", "%00"])
def test_a_non_integer_after_seq_closes_4400_before_any_data(alice, token, value):
    task, jwt = submit(alice), token(alice)

    async def scenario():
        comm = communicator(f"/ws/tasks/{task.id}/?token={jwt}&after_seq={value}")
        await comm.connect()
        return await comm.receive_output(timeout=5)

    assert async_to_sync(scenario)() == CLOSED_4400


@pytest.mark.parametrize("task_id", ["abc", "123", "00000000-0000-0000-0000-00000000000g"])
def test_a_malformed_task_id_closes_4403_like_a_task_that_does_not_exist(alice, token, task_id):
    # Not a routing failure (an HTTP 500 at the handshake and a traceback in the web log).
    jwt = token(alice)

    async def scenario(query: str):
        comm = communicator(f"/ws/tasks/{task_id}/{query}")
        connected, _ = await comm.connect()
        assert connected
        return await comm.receive_output(timeout=5)

    assert async_to_sync(scenario)(f"?token={jwt}") == CLOSED_4403
    assert async_to_sync(scenario)("?token=not-a-jwt") == CLOSED_4401  # authentication first, as for any task


def test_a_task_deleted_between_the_access_check_and_the_snapshot_closes_4403(alice, token, monkeypatch):
    # Task retention (or the admin) deleting the task in that moment: a 4403 as for a task that is gone,
    # not a server error.
    from jobs.consumers import TaskConsumer

    task, jwt = submit(alice), token(alice)
    checked = TaskConsumer.refusal

    def refusal_then_deleted(self, user):
        refused = checked(self, user)
        Task.objects.filter(id=task.id).delete()
        return refused

    monkeypatch.setattr(TaskConsumer, "refusal", refusal_then_deleted)

    async def scenario():
        comm = communicator(f"/ws/tasks/{task.id}/?token={jwt}")
        await comm.connect()
        return await comm.receive_output(timeout=5)

    assert async_to_sync(scenario)() == CLOSED_4403


@pytest.mark.parametrize("path", ["/ws/nope/", "/ws/tasks/", "/ws/tasks/a/b/", "/elsewhere"])
def test_an_unknown_socket_path_is_refused_at_the_handshake(path):
    async def scenario():
        return await communicator(path).connect()

    connected, _ = async_to_sync(scenario)()
    assert connected is False


@pytest.fixture
def quick_recheck(settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "WS_RECHECK_SECONDS": 0.2}


def closes_after(path: str, change) -> dict:
    """Open ``path``, read its snapshot, run ``change`` on a sync thread; the close that follows."""
    async def scenario():
        comm = communicator(path)
        await comm.connect()
        first = json.loads((await comm.receive_output(timeout=5))["text"])
        assert first["event"] in ("task.snapshot", "dashboard.snapshot"), first
        await database_sync_to_async(change)()
        return await next_close(comm)

    return async_to_sync(scenario)()


def test_a_deactivated_users_socket_closes_4401(alice, token, quick_recheck):
    task, jwt = submit(alice), token(alice)

    def deactivate():
        alice.is_active = False
        alice.save(update_fields=["is_active"])

    assert closes_after(f"/ws/tasks/{task.id}/?token={jwt}", deactivate) == CLOSED_4401


def test_a_password_change_closes_the_users_sockets_4401(alice, token, quick_recheck):
    """The tokens issued before a password change no longer work (README), sockets opened with them included."""
    task, jwt = submit(alice), token(alice)

    def change_password():
        alice.set_password("a brand new passphrase")
        alice.save(update_fields=["password"])

    assert closes_after(f"/ws/tasks/{task.id}/?token={jwt}", change_password) == CLOSED_4401


def test_a_demoted_operator_loses_another_users_task_with_4403(alice, olga, token, quick_recheck):
    task, jwt = submit(alice), token(olga)
    assert closes_after(f"/ws/tasks/{task.id}/?token={jwt}", olga.groups.clear) == CLOSED_4403


def test_a_demoted_operators_dashboard_closes_4403(olga, token, quick_recheck):
    assert closes_after(f"/ws/dashboard/?token={token(olga)}", olga.groups.clear) == CLOSED_4403
