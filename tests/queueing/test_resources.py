"""Resource needs: an algorithm that declares ``gpu: 1`` runs only on a queue whose workers provide it."""
from __future__ import annotations

import pytest

from tests.conftest import wait_until
from tests.queueing.conftest import make_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_gpu_algorithm_goes_to_its_gpu_queue_and_waits_for_a_gpu_worker(live_worker, extra_worker, alice, olga, api):
    make_queue("default")  # a transactional test starts with the migration's rows flushed
    client = api(alice)
    listed = client.get("/api/v1/algorithms/test.needs_gpu/").json()
    assert (listed["queue"], listed["resources"]) == ("test-gpu", {"gpu": 1})

    refused = client.post("/api/v1/tasks/", {"algorithm": "test.needs_gpu", "queue": "default"}, format="json")
    assert refused.status_code == 400
    reason = refused.json()["error"]["fields"]["queue"][0]
    assert "needs gpu: 1" in reason and "'default'" in reason

    created = client.post("/api/v1/tasks/", {"algorithm": "test.needs_gpu"}, format="json")
    assert created.status_code == 201, created.content
    task_id = created.json()["id"]
    assert created.json()["queue"] == "test-gpu"
    queue = api(olga).get("/api/v1/queues/test-gpu/").json()
    assert queue["resources"] == {"gpu": 1}  # the home queue was created with what the algorithm declares
    # The session worker consumes only "default": the task waits, and says why.
    waiting = wait_until(lambda: (client.get(f"/api/v1/tasks/{task_id}/").json()["waiting"] or {}).get("reason"),
                         message="a waiting reason")
    assert waiting == "no_worker"

    gpu_worker = extra_worker("test-gpu", 1, tag="gpu")
    done = wait_until(lambda: (b := client.get(f"/api/v1/tasks/{task_id}/").json())["status"] == "SUCCEEDED" and b,
                      timeout=60, message="the task to run on the gpu worker")
    assert done["worker"] == gpu_worker.hostname
    assert client.get(f"/api/v1/tasks/{task_id}/result/").json()["result"] == {"ran": True}


@pytest.mark.django_db
def test_operators_declare_what_a_queue_provides(alice, olga, api):
    make_queue("big")
    client = api(alice)
    body = {"algorithm": "test.needs_gpu", "queue": "big"}
    assert client.post("/api/v1/tasks/", body, format="json").status_code == 400

    assert api(alice).patch("/api/v1/queues/big/", {"resources": {"gpu": 2}}, format="json").status_code == 403
    bad = api(olga).patch("/api/v1/queues/big/", {"resources": {"gpu": -1}}, format="json")
    assert bad.status_code == 400 and "resources" in str(bad.json()["error"]["fields"])
    patched = api(olga).patch("/api/v1/queues/big/", {"resources": {"gpu": 2}}, format="json")
    assert patched.status_code == 200 and patched.json()["resources"] == {"gpu": 2}

    accepted = client.post("/api/v1/tasks/", body, format="json")
    assert accepted.status_code == 201 and accepted.json()["queue"] == "big"
