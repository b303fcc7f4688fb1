"""gRPC remote services, end to end: the reference service as a real process, a real worker."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.remote.conftest import load_example, register

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def _task(client, task_id: str) -> dict:
    response = client.get(f"/api/v1/tasks/{task_id}/")
    assert response.status_code == 200, response.content
    return response.json()


def wait_final(client, task_id: str, timeout: float = 60.0) -> dict:
    return wait_until(lambda: (body := _task(client, task_id))["status"] in FINAL and body,
                      timeout=timeout, message=f"task {task_id} to finish")


def submit(client, algorithm: str, params: dict, **extra) -> dict:
    response = client.post("/api/v1/tasks/", {"algorithm": algorithm, "params": params, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def log_lines(task_id: str) -> list[str]:
    from jobs.models import TaskEvent

    return [e.data.get("line", "") for e in TaskEvent.objects.filter(task_id=task_id, event="task.log")]


def test_discovered_schemes_are_listed_with_backend_and_schema(grpc_service, alice, api):
    register("ref-grpc", "grpc", grpc_service.address)
    client = api(alice)

    listed = {a["name"]: a for a in client.get("/api/v1/algorithms/").json()}

    assert listed["demo.hello_remote"]["backend"] == "grpc"
    assert listed["demo.hello_remote"]["params_schema"]["properties"]["steps"]["type"] == "integer"
    assert listed["grid.power_flow_remote"]["backend"] == "grpc"
    assert listed["demo.hello"]["backend"] == "python"
    detail = client.get("/api/v1/algorithms/demo.hello_remote/").json()
    assert detail["description"].startswith("Greets")


def test_scheme_cache_survives_the_service_going_down_and_health_marks_it_down(grpc_service, alice, api):
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    service, _ = register("ref-grpc", "grpc", grpc_service.address)
    assert discovery.check_health(service) is True

    grpc_service.kill()
    report = discovery.refresh(service)

    assert "discovery failed" in report.error
    assert discovery.check_health(service) is False
    assert RemoteService.objects.get(name="ref-grpc").health == "down"
    names = [a["name"] for a in api(alice).get("/api/v1/algorithms/").json()]
    assert "demo.hello_remote" in names  # the last good discovery still answers


def test_submit_checks_params_against_the_services_json_schema(grpc_service, alice, api):
    register("ref-grpc", "grpc", grpc_service.address)

    response = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.hello_remote",
                                                 "params": {"steps": "many", "colour": "red"}}, format="json")

    assert response.status_code == 400, response.content
    fields = response.json()["error"]["fields"]
    assert "params.steps" in fields
    assert "params.colour" in fields  # an unexpected property is named, as for a local algorithm


def test_invalid_scheme_from_a_service_is_rejected_with_a_clear_error(alice, api):
    from algorithms.remote.models import RemoteService
    from tests.remote.conftest import ServiceProcess

    broken = ServiceProcess("examples/grpc_service/server.py", "--broken-scheme")
    broken.start()
    try:
        _, report = register("ref-grpc", "grpc", broken.address)
    finally:
        broken.kill()

    assert "demo.broken_remote" in report.rejected
    assert "not a valid JSON Schema" in report.rejected["demo.broken_remote"]
    assert "demo.hello_remote" in report.accepted
    assert "demo.broken_remote" in RemoteService.objects.get(name="ref-grpc").discovery_error
    names = [a["name"] for a in api(alice).get("/api/v1/algorithms/").json()]
    assert "demo.broken_remote" not in names and "demo.hello_remote" in names


def test_remote_task_relays_progress_and_returns_the_result(live_worker, grpc_service, alice, api):
    from jobs.models import TaskEvent

    register("ref-grpc", "grpc", grpc_service.address)
    client = api(alice)

    task = submit(client, "demo.hello_remote", {"name": "Ada", "steps": 4, "delay": 0.1})
    done = wait_final(client, task["id"])

    assert done["status"] == "SUCCEEDED", done
    assert client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"] == {"greeting": "Hello, Ada!", "steps": 4}
    progress = TaskEvent.objects.filter(task_id=task["id"], event="task.progress")
    assert any(e.data.get("stage") == "greeting" for e in progress), [e.data for e in progress]
    assert done["params"] == {"name": "Ada", "steps": 4, "delay": 0.1}
    assert any("submitted remote task" in line for line in log_lines(task["id"]))
    assert [e["client_task_id"] for e in grpc_service.events("submitted")] == [task["id"]]


def test_power_flow_runs_remotely(live_worker, grpc_service, alice, api):
    register("ref-grpc", "grpc", grpc_service.address)
    client = api(alice)

    task = submit(client, "grid.power_flow_remote", {"case": "case9"})
    done = wait_final(client, task["id"])

    assert done["params"] == {"case": "case9", "load_scale": 1.0}  # the schema's defaults filled in
    assert done["status"] == "SUCCEEDED", done
    result = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]
    assert result["converged"] is True and len(result["vm_pu"]) == 9


def test_cancel_reaches_the_remote_service(live_worker, grpc_service, alice, api):
    register("ref-grpc", "grpc", grpc_service.address)
    client = api(alice)
    task = submit(client, "demo.hello_remote", {"steps": 1000, "delay": 0.05})
    wait_until(lambda: _task(client, task["id"])["progress"]["stage"] == "greeting", message="remote progress")

    assert client.post(f"/api/v1/tasks/{task['id']}/cancel/").status_code == 200
    done = wait_final(client, task["id"])

    assert done["status"] == "CANCELLED", done
    assert [e["client_task_id"] for e in grpc_service.events("cancel_requested")] == [task["id"]]
    wait_until(lambda: grpc_service.events("cancelled"), message="the service to stop the task")


def _expected_sha256(size: int, seed: int) -> str:
    byte_chunks = load_example("examples/grpc_service/server.py", "grpc_reference_service").byte_chunks

    sha = hashlib.sha256()
    for chunk in byte_chunks(size, seed):
        sha.update(chunk)
    return sha.hexdigest()


def _worker_children_peak_rss(worker) -> dict[int, int]:
    peaks = {}
    for child in Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children").read_text().split():
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except FileNotFoundError:
            continue
        peaks[int(child)] = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return peaks


def test_100mb_result_arrives_intact_with_flat_worker_memory(live_worker, grpc_service, alice, api):
    from algorithms.models import Artifact

    register("ref-grpc", "grpc", grpc_service.address)
    client = api(alice)
    size = 100 * 1024 * 1024
    before = _worker_children_peak_rss(live_worker)

    task = submit(client, "demo.bytes_remote", {"size": size, "seed": 7})
    done = wait_final(client, task["id"], timeout=120)

    assert done["status"] == "SUCCEEDED", done
    expected = _expected_sha256(size, 7)
    stored = Artifact.objects.get(task_id=task["id"], kind="result")
    assert (stored.size, stored.sha256) == (size, expected)
    response = client.get(f"/api/v1/tasks/{task['id']}/result/")
    sha, received = hashlib.sha256(), 0
    for chunk in response.streaming_content:
        sha.update(chunk)
        received += len(chunk)
    assert (received, sha.hexdigest()) == (size, expected)
    after = _worker_children_peak_rss(live_worker)
    growth_kib = max((after[pid] - before.get(pid, after[pid])) for pid in after)
    assert growth_kib < 48 * 1024, f"a worker child's peak memory grew by {growth_kib} KiB"


def test_service_down_at_submit_the_task_waits_in_its_queue_then_runs(live_worker, grpc_service, alice, api):
    from jobs.models import TaskEvent

    register("ref-grpc", "grpc", grpc_service.address)
    grpc_service.kill()
    client = api(alice)

    task = submit(client, "demo.hello_remote", {"steps": 2, "delay": 0.05})
    wait_until(lambda: _task(client, task["id"])["progress"]["stage"] == "waiting for service",
               message="the task to wait for its service")
    # After REMOTE_HOLD_AFTER_SECONDS in the worker it goes back to the queue, freeing the slot.
    held = wait_until(lambda: TaskEvent.objects.filter(task_id=task["id"], event="task.requeued").first(),
                      timeout=30, message="the task to go back to its queue")
    assert held.status == "PENDING" and held.data["reason"] == "remote service unavailable"
    grpc_service.start()
    done = wait_final(client, task["id"])

    assert done["status"] == "SUCCEEDED", done
    assert done["attempts"] == 1  # waiting for the service used no retry
    assert [e["client_task_id"] for e in grpc_service.events("submitted")] == [task["id"]]


def test_a_service_the_health_check_marked_down_holds_no_worker_slot(live_worker, grpc_service, alice, api):
    from algorithms.remote import discovery
    from jobs.models import TaskEvent

    service, _ = register("ref-grpc", "grpc", grpc_service.address)
    grpc_service.kill()
    assert discovery.check_health(service) is False
    client = api(alice)

    task = submit(client, "demo.hello_remote", {"steps": 2, "delay": 0.05})
    held = wait_until(lambda: TaskEvent.objects.filter(task_id=task["id"], event="task.requeued").first(),
                      timeout=15, message="the task to go back to its queue")
    grpc_service.start()
    done = wait_final(client, task["id"])

    assert held.data["service"] == "ref-grpc"
    assert done["status"] == "SUCCEEDED", done
    assert done["attempts"] == 1


def test_service_down_longer_than_the_timeout_times_the_task_out(live_worker, grpc_service, alice, api):
    register("ref-grpc", "grpc", grpc_service.address)
    grpc_service.kill()
    client = api(alice)

    task = submit(client, "demo.hello_remote", {"steps": 2}, timeout_seconds=3)
    done = wait_final(client, task["id"])

    assert done["status"] == "TIMED_OUT", done


def test_worker_killed_mid_task_reattaches_to_the_remote_task(live_worker, grpc_service, alice, api):
    from algorithms.remote.models import RemoteRun

    register("ref-grpc", "grpc", grpc_service.address)
    client = api(alice)
    task = submit(client, "demo.hello_remote", {"steps": 100, "delay": 0.1})
    wait_until(lambda: _task(client, task["id"])["progress"]["stage"] == "greeting", message="remote progress")

    live_worker.kill()
    live_worker.start()
    done = wait_final(client, task["id"], timeout=90)

    assert done["status"] == "SUCCEEDED", done
    assert done["attempts"] == 2
    assert [e["client_task_id"] for e in grpc_service.events("submitted")] == [task["id"]]  # never started twice
    assert RemoteRun.objects.get(task_id=task["id"]).attached == 1
    assert any("re-attached" in line for line in log_lines(task["id"]))


def test_service_restarted_mid_task_the_task_is_run_again_not_lost(live_worker, grpc_service, alice, api):
    register("ref-grpc", "grpc", grpc_service.address)
    client = api(alice)
    task = submit(client, "demo.hello_remote", {"steps": 30, "delay": 0.1})
    wait_until(lambda: _task(client, task["id"])["progress"]["stage"] == "greeting", message="remote progress")

    grpc_service.kill()
    grpc_service.start()
    done = wait_final(client, task["id"], timeout=60)

    assert done["status"] == "SUCCEEDED", done
    assert len(grpc_service.events("submitted")) == 2  # the restarted service forgot it; submitted again
    assert any("is gone" in line for line in log_lines(task["id"]))
