"""Single tasks and batches share one idempotency-key namespace per user. A batch's tasks are stored
under ``<key>#<index>``, so: a single task (submit or retry) with a key a batch used is a 409, a batch
with a key a single task used is a 409, and a single task's key may not end in "#" and digits (400
naming Idempotency-Key); a batch stored before this is replayed as before, never duplicated."""
from __future__ import annotations

import threading

import pytest
from django.db import connection

from jobs import services
from jobs.models import Task

pytestmark = pytest.mark.django_db

BATCH = {"tasks": [{"algorithm": "demo.noop"}, {"algorithm": "demo.noop", "labels": ["b"]}]}
SINGLE = {"algorithm": "demo.noop"}


def post(client, path: str, body: dict, key: str):
    return client.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_a_single_submit_with_a_batchs_key_is_a_conflict(alice, api):
    client = api(alice)
    assert post(client, "/api/v1/tasks/batch/", BATCH, "K").status_code == 201

    single = post(client, "/api/v1/tasks/", SINGLE, "K")

    assert single.status_code == 409, single.content
    assert single.json()["error"]["code"] == "idempotency_conflict"
    assert Task.objects.count() == 2
    again = post(client, "/api/v1/tasks/batch/", BATCH, "K")  # the batch itself is still replayed
    assert again.status_code == 200 and Task.objects.count() == 2


def test_a_batch_with_a_single_tasks_key_is_a_conflict(alice, api):
    client = api(alice)
    assert post(client, "/api/v1/tasks/", SINGLE, "K").status_code == 201

    batch = post(client, "/api/v1/tasks/batch/", BATCH, "K")

    assert batch.status_code == 409, batch.content
    assert batch.json()["error"]["code"] == "idempotency_conflict"
    assert Task.objects.count() == 1
    assert post(client, "/api/v1/tasks/", SINGLE, "K").status_code == 200


@pytest.mark.parametrize("key", ["K#0", "K#1", "run#12"])
def test_a_single_tasks_key_ending_in_hash_and_digits_is_400_naming_the_header(alice, api, key):
    client = api(alice)
    batch = post(client, "/api/v1/tasks/batch/", BATCH, "K")
    first_item = batch.json()["tasks"][0]["id"]

    single = post(client, "/api/v1/tasks/", SINGLE, key)

    assert single.status_code == 400, single.content
    assert list(single.json()["error"]["fields"]) == ["Idempotency-Key"]
    assert single.json().get("id") != first_item
    assert Task.objects.count() == 2


def test_keys_with_a_hash_elsewhere_are_a_single_tasks_own(alice, api):
    client = api(alice)
    for key in ("K#", "K#x", "#1x", "a#1#b"):
        assert post(client, "/api/v1/tasks/", SINGLE, key).status_code == 201, key
    assert post(client, "/api/v1/tasks/batch/", BATCH, "K#0").status_code == 201  # stored as K#0#0, K#0#1
    assert Task.objects.count() == 6


def test_a_retry_with_a_batchs_key_is_a_conflict_and_one_ending_in_hash_digits_a_400(alice, api):
    client = api(alice)
    done = post(client, "/api/v1/tasks/", SINGLE, "first").json()
    Task.objects.filter(id=done["id"]).update(status="FAILED")
    assert post(client, "/api/v1/tasks/batch/", BATCH, "K").status_code == 201

    same = client.post(f"/api/v1/tasks/{done['id']}/retry/", HTTP_IDEMPOTENCY_KEY="K")
    item = client.post(f"/api/v1/tasks/{done['id']}/retry/", HTTP_IDEMPOTENCY_KEY="K#1")

    assert (same.status_code, item.status_code) == (409, 400), (same.content, item.content)
    assert Task.objects.count() == 3


@pytest.mark.django_db(transaction=True)  # the threads need committed rows and their own connections
def test_a_single_submit_and_a_batch_sent_at_once_with_one_key_make_one_of_them(alice):
    outcomes: list[str] = []

    def run(barrier: threading.Barrier, submit) -> None:
        barrier.wait()
        try:
            submit()
            outcomes.append("created")
        except services.IdempotencyConflict:
            outcomes.append("409")
        finally:
            connection.close()

    spec = services.build_spec(algorithm="demo.noop")
    for n in range(8):
        key, barrier, outcomes[:] = f"race-{n}", threading.Barrier(2), []
        threads = [
            threading.Thread(target=run, args=(barrier, lambda: services.submit(owner=alice, spec=spec,
                                                                                 idempotency_key=key))),
            threading.Thread(target=run, args=(barrier, lambda: services.submit_batch(owner=alice, specs=[spec, spec],
                                                                                       idempotency_key=key))),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["409", "created"], (key, outcomes)
        made = Task.objects.filter(idempotency_key__in=[key, f"{key}#0", f"{key}#1"]).count()
        assert made in (1, 2), (key, made)
