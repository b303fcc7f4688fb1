"""WebSocket + MsgPack remote services: the reference compute service as a real process."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest

from tests.conftest import wait_until
from tests.remote.conftest import load_example, register
from tests.remote.test_grpc import _task, submit, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def simulate_values(n: int, seed: int) -> np.ndarray:
    # the reference service's own computation
    return load_example("examples/ws_service/server.py", "ws_reference_service").simulate_values(n, seed)


def ws_address(service) -> str:
    return f"ws://{service.address}/"


def test_ws_schemes_are_listed_with_backend_ws(ws_service, alice, api):
    register("ref-ws", "ws", ws_address(ws_service))

    listed = {a["name"]: a for a in api(alice).get("/api/v1/algorithms/").json()}

    assert listed["simulate"]["backend"] == "ws"
    assert listed["simulate"]["params_schema"]["properties"]["n"]["type"] == "integer"


def test_simulate_relays_progress_and_returns_float64_values_exactly(live_worker, ws_service, alice, api):
    from jobs.models import TaskEvent

    register("ref-ws", "ws", ws_address(ws_service))
    client = api(alice)

    task = submit(client, "simulate", {"n": 500, "steps": 4, "delay": 0.05, "seed": 3})
    done = wait_final(client, task["id"])

    assert done["status"] == "SUCCEEDED", done
    values = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]["values"]
    assert [float(v).hex() for v in values] == [float(v).hex() for v in simulate_values(500, 3)]
    stages = [e.data.get("stage") for e in TaskEvent.objects.filter(task_id=task["id"], event="task.progress")]
    assert "simulating" in stages


def test_large_simulate_result_is_a_bit_exact_npy_download(live_worker, ws_service, alice, api):
    from algorithms.models import Artifact

    register("ref-ws", "ws", ws_address(ws_service))
    client = api(alice)

    task = submit(client, "simulate", {"n": 2_000_000, "steps": 1, "delay": 0, "seed": 5})
    done = wait_final(client, task["id"], timeout=90)

    assert done["status"] == "SUCCEEDED", done
    assert Artifact.objects.get(task_id=task["id"], kind="result").content_type == "application/x-npy"
    response = client.get(f"/api/v1/tasks/{task['id']}/result/")
    received = np.load(io.BytesIO(b"".join(response.streaming_content)), allow_pickle=False)
    assert received.dtype == np.float64
    assert received.tobytes() == simulate_values(2_000_000, 5).tobytes()


def test_cancel_reaches_the_ws_service(live_worker, ws_service, alice, api):
    register("ref-ws", "ws", ws_address(ws_service))
    client = api(alice)
    task = submit(client, "simulate", {"n": 10, "steps": 2000, "delay": 0.05})
    wait_until(lambda: _task(client, task["id"])["progress"]["stage"] == "simulating", message="remote progress")

    assert client.post(f"/api/v1/tasks/{task['id']}/cancel/").status_code == 200
    done = wait_final(client, task["id"])

    assert done["status"] == "CANCELLED", done
    assert [e["client_task_id"] for e in ws_service.events("cancel_requested")] == [task["id"]]
    wait_until(lambda: ws_service.events("cancelled"), message="the service to stop the task")


def test_ws_service_restarted_mid_task_the_task_is_run_again(live_worker, ws_service, alice, api):
    register("ref-ws", "ws", ws_address(ws_service))
    client = api(alice)
    task = submit(client, "simulate", {"n": 10, "steps": 40, "delay": 0.1})
    wait_until(lambda: _task(client, task["id"])["progress"]["stage"] == "simulating", message="remote progress")

    ws_service.kill()
    ws_service.start()
    done = wait_final(client, task["id"], timeout=60)

    assert done["status"] == "SUCCEEDED", done
    assert len(ws_service.events("submitted")) == 2


def test_tasks_share_one_socket_and_the_client_reconnects_after_a_restart(ws_service):
    from algorithms.remote import client as c
    from algorithms.remote.ws_client import WsClient

    ws = WsClient(ws_address(ws_service), token="", connect_timeout=2, call_timeout=5)
    ids = [ws.submit(scheme="simulate", params={"n": 50, "steps": 3, "seed": i}, client_task_id=f"t{i}", attempt=1)[0]
           for i in range(4)]
    finals: dict[str, c.Progress] = {}

    def follow(remote_id: str) -> None:
        finals[remote_id] = [p for p in ws.watch(remote_id)][-1]

    threads = [threading.Thread(target=follow, args=(rid,)) for rid in ids]
    [t.start() for t in threads]
    [t.join(timeout=30) for t in threads]

    assert all(finals[rid].state == "SUCCEEDED" for rid in ids)
    assert len(ws_service.events("connected")) == 1  # four tasks, one socket
    ws_service.kill()
    with pytest.raises(c.Unavailable):
        ws.ping()
    ws_service.start()
    wait_until(lambda: _pings(ws), timeout=20, message="the client to reconnect")
    assert len(ws_service.events("connected")) == 2
    ws.close()


def _pings(ws) -> bool:
    from algorithms.remote import client as c

    try:
        ws.ping()
        return True
    except c.Unavailable:
        return False
