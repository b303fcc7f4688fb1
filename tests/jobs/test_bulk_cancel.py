"""Cancel many tasks at once (``POST /api/v1/tasks/cancel/``, ``services.cancel_many``): by label as a user
does it, by ids, what is refused, the chunks, and the race the single cancel settles."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import transaction

from jobs import execution, selectors, services
from jobs.models import Status, Task
from queueing.models import Queue
from tests.conftest import queued_tasks, unconsumed_queue, wait_until
from tests.jobs.test_state_races import (
    BACK, _cancelled_by_its_user, _running, _when_it_went_back_just_after_the_first_statement, _while_it_goes_back,
)

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/tasks/cancel/"


def _submit(client: Any, algorithm: str, **body: Any) -> str:
    response = client.post("/api/v1/tasks/", {"algorithm": algorithm, **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def _status(task: Any) -> str:
    """The status of ``task`` (a Task or an id) as committed now."""
    return Task.objects.get(id=getattr(task, "id", task)).status


def _events(task: Any) -> list[str]:
    return list(Task.objects.get(id=getattr(task, "id", task)).events.order_by("seq").values_list("event", flat=True))


# --- the user's view --------------------------------------------------------------------------------

def test_a_sweep_is_cancelled_by_its_label_running_and_waiting_tasks_alike_and_only_its_owners(
        live_worker, alice, bob, olga, api):
    client = api(alice)
    done = _submit(client, "demo.noop", labels=["sweep-42"])
    wait_until(lambda: _status(done) == Status.SUCCEEDED, message="the first task to succeed")
    running = _submit(client, "demo.sleep", params={"seconds": 60}, labels=["sweep-42"])
    wait_until(lambda: _status(running) == Status.RUNNING, message="the sleeper to start")
    waiting = [_submit(client, "demo.noop", queue=unconsumed_queue(), labels=["sweep-42", f"n{i}"]) for i in range(3)]
    other_sweep = _submit(client, "demo.noop", queue=unconsumed_queue(), labels=["sweep-43"])
    bobs = _submit(api(bob), "demo.noop", queue=unconsumed_queue(), labels=["sweep-42"])

    response = client.post(URL, {"filters": {"label": "sweep-42"}}, format="json")

    assert response.status_code == 200, response.content
    assert response.json() == {"cancelled": 3, "cancelling": 1, "already_final": 1, "not_found": []}
    for task_id in waiting:
        row = Task.objects.get(id=task_id)
        assert row.status == Status.CANCELLED and row.started_at is None and row.finished_at is not None
        assert _events(task_id)[-1] == "task.cancelled"
    wait_until(lambda: _status(running) == Status.CANCELLED, timeout=15, message="the worker to stop the sleeper")
    assert _events(running)[-1] == "task.cancelled"
    assert _status(done) == Status.SUCCEEDED
    assert _status(other_sweep) in (Status.PENDING, Status.QUEUED)
    assert _status(bobs) in (Status.PENDING, Status.QUEUED)  # alice's filter never reaches bob's tasks

    by_operator = api(olga).post(URL, {"filters": {"label": "sweep-42", "status": ["PENDING", "QUEUED"]}},
                                 format="json")

    assert by_operator.json() == {"cancelled": 1, "cancelling": 0, "already_final": 0, "not_found": []}
    assert _status(bobs) == Status.CANCELLED and _events(bobs)[-1] == "task.cancelled"
    assert _status(other_sweep) in (Status.PENDING, Status.QUEUED)


# --- by ids --------------------------------------------------------------------------------------

def test_ids_of_no_task_or_of_another_users_task_are_reported_and_final_tasks_counted(alice, bob, api):
    waiting, running, final = queued_tasks(alice, 3)
    execution.claim(task_id=running.id, worker="w")
    services.cancel(task_id=final.id)
    [bobs] = queued_tasks(bob, 1)
    nobody = str(uuid.uuid4())

    ids = [str(t.id) for t in (waiting, running, final, bobs)] + [nobody, str(waiting.id)]
    response = api(alice).post(URL, {"task_ids": ids}, format="json")

    assert response.status_code == 200, response.content
    assert response.json() == {"cancelled": 1, "cancelling": 1, "already_final": 1, "not_found": [str(bobs.id), nobody]}
    assert _status(waiting) == Status.CANCELLED and _events(waiting).count("task.cancelled") == 1
    row = Task.objects.get(id=running.id)
    assert row.status == Status.RUNNING and row.cancel_requested  # its worker stops it
    assert _status(bobs) == Status.QUEUED and not Task.objects.get(id=bobs.id).cancel_requested
    assert _events(final).count("task.cancelled") == 1  # left as it was


def test_an_operator_cancels_anyones_tasks_by_id(alice, olga, api):
    [task] = queued_tasks(alice, 1)

    response = api(olga).post(URL, {"task_ids": [str(task.id)]}, format="json")

    assert response.json() == {"cancelled": 1, "cancelling": 0, "already_final": 0, "not_found": []}
    assert _status(task) == Status.CANCELLED


def test_a_cancelled_queued_task_frees_its_slot_for_the_next_one_at_once(alice, api):
    queue = unconsumed_queue()
    Queue.objects.filter(name=queue).update(concurrency=2)
    first = queued_tasks(alice, 2)  # the window is full
    later = [services.submit(owner=alice, spec=services.build_spec(algorithm="demo.noop", queue=queue))[0]
             for _ in range(2)]
    assert {_status(t) for t in later} == {Status.PENDING}

    api(alice).post(URL, {"task_ids": [str(t.id) for t in first]}, format="json")

    # dispatched on the cancel's commit, before its answer (not on the beat's next tick)
    assert {_status(t) for t in later} == {Status.QUEUED}


# --- refused -------------------------------------------------------------------------------------

REFUSED = {
    "neither": ({}, "task_ids"),
    "both": ({"task_ids": [str(uuid.uuid4())], "filters": {"label": "x"}}, "filters"),
    "ids not a list": ({"task_ids": "abc"}, "task_ids"),
    "no ids": ({"task_ids": []}, "task_ids"),
    "a bad id": ({"task_ids": [str(uuid.uuid4()), "not-a-uuid"]}, "task_ids[1]"),
    "too many ids": ({"task_ids": [str(uuid.uuid4()) for _ in range(1001)]}, "task_ids"),
    "ids null": ({"task_ids": None}, "task_ids"),
    "empty filters": ({"filters": {}}, "filters"),
    "filters of no value": ({"filters": {"label": "", "status": []}}, "filters"),
    "filters not an object": ({"filters": "label=x"}, "filters"),
    "an unknown filter": ({"filters": {"lable": "x"}}, "filters.lable"),
    "an unknown status": ({"filters": {"status": ["DONE"]}}, "filters.status"),
    "an unknown priority": ({"filters": {"priority": "urgent"}}, "filters.priority"),
    "a bad date": ({"filters": {"created_after": "yesterday"}}, "filters.created_after"),
    "a list for a single value": ({"filters": {"queue": ["a", "b"]}}, "filters.queue"),
    "an object for a value": ({"filters": {"label": {"x": 1}}}, "filters.label"),
    "a NUL": ({"filters": {"queue": "de\x00fault"}}, "filters.queue"),
    "a label too long": ({"filters": {"label": "x" * 101}}, "filters.label"),
}


@pytest.mark.parametrize("body, field", REFUSED.values(), ids=REFUSED.keys())
def test_bad_input_is_a_400_naming_the_field_and_cancels_nothing(alice, api, body, field):
    [task] = queued_tasks(alice, 1)

    response = api(alice).post(URL, body, format="json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error
    assert _status(task) == Status.QUEUED


@pytest.mark.parametrize("raw, field", [
    ('{"filters": {"label": "\\ud800"}}', "filters.label"),
    ('{"filters": {"queue": "x\\udfffy"}}', "filters.queue"),
    ('{"filters": {"status": ["PENDING", "\\ud800"]}}', "filters.status"),
    ('{"filters": {"\\ud800": "x"}}', "filters"),
])
def test_a_lone_surrogate_in_a_filter_is_a_400_not_a_500(alice, api, raw, field):
    # JSON may spell a UTF-16 half on its own; no database or UTF-8 answer can hold one.
    [task] = queued_tasks(alice, 1)
    for url in (URL, "/api/v1/tasks/retry/"):
        response = api(alice).post(url, data=raw, content_type="application/json")
        assert response.status_code == 400, response.content
        assert field in response.json()["error"]["fields"]
    assert _status(task) == Status.QUEUED


def test_a_body_that_is_not_an_object_is_a_400(alice, api):
    response = api(alice).post(URL, ["abc"], format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"


# --- chunks --------------------------------------------------------------------------------------

def spy_on_chunks(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[int, bool]]:
    """From now on, each chunk of ids ``services.<name>`` is handed, as (its size, whether a transaction
    was already open)."""
    seen: list[tuple[int, bool]] = []
    real = getattr(services, name)

    def spy(task_ids: list[str]) -> Any:
        seen.append((len(task_ids), transaction.get_connection().in_atomic_block))
        return real(task_ids)

    monkeypatch.setattr(services, name, spy)
    return seen


@pytest.fixture
def chunks(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``seen = chunks()``: from then on, each chunk a cancel hands on (``spy_on_chunks``)."""
    return lambda: spy_on_chunks(monkeypatch, "_cancel_now")


def test_a_filter_is_cancelled_a_chunk_at_a_time_each_in_its_own_transaction(alice, chunks):
    tasks = queued_tasks(alice, 5)
    services.cancel(task_id=tasks[0].id)  # final: counted once, read by no chunk
    seen = chunks()

    counts = services.cancel_many(tasks=selectors.tasks_for(alice).filter(queue_id=unconsumed_queue()), chunk=2)

    assert (counts.cancelled, counts.cancelling, counts.already_final, counts.not_found) == (4, 0, 1, [])
    assert seen == [(2, False), (2, False)]
    assert {_status(t) for t in tasks} == {Status.CANCELLED}


def test_ids_are_cancelled_a_chunk_at_a_time_and_a_repeated_id_once(alice, chunks):
    tasks = queued_tasks(alice, 3)
    nobody = str(uuid.uuid4())
    ids = [tasks[0].id, nobody, tasks[1].id, tasks[2].id, tasks[0].id]
    seen = chunks()

    counts = services.cancel_many(tasks=selectors.tasks_for(alice), task_ids=ids, chunk=2)

    assert (counts.cancelled, counts.not_found) == (3, [nobody])
    assert seen == [(1, False), (2, False)]


# --- the race the single cancel settles: a running task going back to PENDING meanwhile ------------

@BACK
def test_a_bulk_cancel_waiting_for_a_running_task_going_back_to_pending_cancels_it(alice, back):
    running = _running(alice)
    [waiting] = queued_tasks(alice, 1)

    answer = _while_it_goes_back(back, running, lambda: services.cancel_many(
        tasks=selectors.tasks_for(alice), task_ids=[running.id, waiting.id]))

    assert isinstance(answer, services.CancelCounts), f"cancel_many answered {answer!r}"
    assert (answer.cancelled, answer.cancelling, answer.already_final) == (2, 0, 0)
    _cancelled_by_its_user(running)


@BACK
def test_a_bulk_cancel_seeing_a_running_task_that_went_back_to_pending_meanwhile_cancels_it(alice, back, monkeypatch):
    running = _running(alice)
    [waiting] = queued_tasks(alice, 1)

    answer = _when_it_went_back_just_after_the_first_statement(monkeypatch, back, running, lambda: services.cancel_many(
        tasks=selectors.tasks_for(alice), task_ids=[running.id, waiting.id]))

    assert isinstance(answer, services.CancelCounts), f"cancel_many answered {answer!r}"
    assert (answer.cancelled, answer.cancelling, answer.already_final) == (2, 0, 0)
    _cancelled_by_its_user(running)
