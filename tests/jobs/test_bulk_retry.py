"""Retry many finished tasks at once (``POST /api/v1/tasks/retry/``, ``services.retry_many``): a sweep's
failures by label as a user does it, by ids, a call sent again (it makes nothing twice), what is refused,
and the chunks."""
from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from django.db import transaction

from jobs import execution, selectors, services, transitions
from jobs.models import FINAL, Status, Task
from tests.conftest import queued_tasks, wait_until
from tests.jobs.test_bulk_cancel import _status, _submit, spy_on_chunks

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/tasks/retry/"


def _failed(owner: Any, n: int, *, label: str = "sweep-42", status: str = Status.FAILED) -> list[str]:
    """``n`` of ``owner``'s tasks of ``label``, ended ``status`` (FAILED: run and given up, CANCELLED) in
    a queue no worker takes from: their retries stay there too."""
    tasks = queued_tasks(owner, n)
    ids = [str(t.id) for t in tasks]
    Task.objects.filter(id__in=ids).update(labels=[label], priority=7)
    if status == Status.FAILED:
        execution.claim_many(task_ids=ids, worker="w")
        with transaction.atomic():
            execution.give_up(ids, error="CUDA error: an illegal memory access", data={})
    else:
        services.cancel_many(tasks=selectors.tasks_for(owner), task_ids=ids)
    assert {_status(i) for i in ids} == {status}
    return ids


def _retries_of(task_ids: list[str]) -> dict[str, list[Task]]:
    found: dict[str, list[Task]] = {i: [] for i in task_ids}
    for task in Task.objects.filter(retry_of_id__in=task_ids).order_by("created_at"):
        found[str(task.retry_of_id)].append(task)
    return found


# --- the user's view --------------------------------------------------------------------------------

def test_a_sweeps_failed_tasks_are_retried_by_label_and_run_again_only_the_callers(
        live_worker, alice, bob, olga, api):
    client = api(alice)
    failing = [_submit(client, "demo.flaky", params={"fail_times": 1}, max_retries=0, labels=["sweep-42"],
                       priority=7) for _ in range(3)]
    fine = _submit(client, "demo.noop", labels=["sweep-42"])
    other_sweep = _submit(client, "demo.flaky", params={"fail_times": 1}, max_retries=0, labels=["sweep-43"])
    bobs = _submit(api(bob), "demo.flaky", params={"fail_times": 1}, max_retries=0, labels=["sweep-42"])
    everyone = [*failing, fine, other_sweep, bobs]
    wait_until(lambda: all(_status(t) in FINAL for t in everyone), message="the sweep to end")
    assert [_status(t) for t in failing] == [Status.FAILED] * 3 and _status(fine) == Status.SUCCEEDED

    response = client.post(URL, {"filters": {"label": "sweep-42", "status": "FAILED"}}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["retried"], body["not_final"], body["not_found"]) == (3, 0, [])
    assert set(body["retries"]) == set(failing) and body["new_task_ids"] == list(body["retries"].values())
    assert body["new_task_ids"] == [body["retries"][t] for t in sorted(failing)]  # by id, for filters
    for old_id, new_id in body["retries"].items():
        old, new = Task.objects.get(id=old_id), Task.objects.get(id=new_id)
        assert new.retry_of_id == old.id and new.owner_id == alice.id
        assert (new.algorithm, new.params, new.queue_id, new.priority, new.labels, new.max_retries,
                new.timeout_seconds) == (old.algorithm, old.params, old.queue_id, 7, ["sweep-42"], 0,
                                         old.timeout_seconds)
    new_ids = body["new_task_ids"]
    wait_until(lambda: all(_status(t) in FINAL for t in new_ids), message="the retries to run")
    for new_id in new_ids:  # a real rerun: demo.flaky fails its first attempt again
        row = client.get(f"/api/v1/tasks/{new_id}/").json()
        assert row["retry_of"] in failing and row["status"] == "FAILED" and row["attempts"] == 1
        assert "planned failure on attempt 1" in row["error"]
    assert _retries_of([fine, other_sweep, bobs]) == {fine: [], other_sweep: [], bobs: []}
    assert [_status(t) for t in failing] == [Status.FAILED] * 3  # final states never change

    by_operator = api(olga).post(URL, {"task_ids": [bobs]}, format="json")

    assert by_operator.status_code == 201, by_operator.content
    [bobs_retry] = by_operator.json()["new_task_ids"]
    assert Task.objects.get(id=bobs_retry).owner_id == bob.id  # the owner's task, whoever asked
    wait_until(lambda: _status(bobs_retry) in FINAL, message="bob's retry to run")


def test_a_task_whose_algorithm_is_gone_is_retried_and_its_new_task_fails_to_start(live_worker, alice, api):
    """As the single retry: the stored algorithm and params are not checked again; the new task fails on
    its worker, saying why, and the other tasks of the call are retried as any."""
    client = api(alice)
    gone, fine = (_submit(client, "demo.flaky", params={"fail_times": 1}, max_retries=0) for _ in range(2))
    wait_until(lambda: {_status(gone), _status(fine)} == {Status.FAILED}, message="both to fail")
    Task.objects.filter(id=gone).update(algorithm="demo.removed_since")

    body = client.post(URL, {"task_ids": [gone, fine]}, format="json").json()

    assert body["retried"] == 2
    new_gone, new_fine = body["new_task_ids"]
    wait_until(lambda: _status(new_gone) in FINAL and _status(new_fine) in FINAL, message="the retries to end")
    failed = Task.objects.get(id=new_gone)
    assert failed.status == Status.FAILED and "cannot start" in failed.error and "demo.removed_since" in failed.error
    assert "planned failure" in Task.objects.get(id=new_fine).error


# --- by ids --------------------------------------------------------------------------------------

def test_ids_of_no_task_another_users_task_or_a_task_not_finished_are_reported(alice, bob, api):
    ended = _failed(alice, 2)
    cancelled = _failed(alice, 1, status=Status.CANCELLED)
    [waiting] = queued_tasks(alice, 1)
    bobs = _failed(bob, 1)
    nobody = str(uuid.uuid4())
    ids = [cancelled[0], nobody, str(waiting.id), ended[1], bobs[0], ended[0], ended[1]]

    response = api(alice).post(URL, {"task_ids": ids}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["retried"], body["not_final"], body["not_found"]) == (3, 1, [nobody, bobs[0]])
    assert list(body["retries"]) == [cancelled[0], ended[1], ended[0]]  # the order given, once each
    assert body["new_task_ids"] == [body["retries"][i] for i in (cancelled[0], ended[1], ended[0])]
    assert {i: len(r) for i, r in _retries_of([*ended, *cancelled, str(waiting.id), *bobs]).items()} == {
        ended[0]: 1, ended[1]: 1, cancelled[0]: 1, str(waiting.id): 0, bobs[0]: 0}
    assert _status(waiting.id) == Status.QUEUED
    new = Task.objects.filter(id__in=body["new_task_ids"])
    assert {t.status for t in new} <= {Status.PENDING, Status.QUEUED}
    assert all(t.events.filter(event="task.created").exists() for t in new)


def test_only_ids_of_tasks_not_finished_retry_nothing_and_answer_200(alice, api):
    [waiting] = queued_tasks(alice, 1)

    response = api(alice).post(URL, {"task_ids": [str(waiting.id)]}, format="json")

    assert response.status_code == 200, response.content
    assert response.json() == {"retried": 0, "new_task_ids": [], "retries": {}, "already_retried": 0,
                               "not_final": 1, "not_found": []}


# --- sent again ----------------------------------------------------------------------------------

def _give_up(task_ids: list[str]) -> None:
    """As a worker whose runs of these tasks failed."""
    execution.claim_many(task_ids=task_ids, worker="w")
    with transaction.atomic():
        execution.give_up(task_ids, error="CUDA error again", data={})


def test_a_call_sent_again_makes_nothing_twice_and_a_later_one_retries_the_retries_that_failed(alice, api):
    ended = _failed(alice, 2)
    [waiting] = queued_tasks(alice, 1)
    client = api(alice)
    body = {"task_ids": [*ended, str(waiting.id)]}

    first = client.post(URL, body, format="json")
    again = client.post(URL, body, format="json")  # a timeout's resend: nothing twice, the same retries

    assert (first.status_code, again.status_code) == (201, 200), (first.content, again.content)
    assert again.json() == {**first.json(), "retried": 0, "new_task_ids": [], "already_retried": 2}
    assert first.json()["not_final"] == 1 and first.json()["already_retried"] == 0
    assert {i: len(r) for i, r in _retries_of([*ended, str(waiting.id)]).items()} == {
        ended[0]: 1, ended[1]: 1, str(waiting.id): 0}

    services.cancel(task_id=waiting.id)  # finished since: the same call now retries it, and only it
    third = client.post(URL, body, format="json").json()
    assert (third["retried"], third["already_retried"], third["not_final"]) == (1, 2, 0)
    assert {k: v for k, v in third["retries"].items() if k in ended} == first.json()["retries"]

    # the sweep's retries fail too: the same filter now retries those, not the originals once more
    retries = [first.json()["retries"][i] for i in ended]
    _give_up(retries)
    by_label = client.post(URL, {"filters": {"label": "sweep-42", "status": "FAILED"}}, format="json").json()
    assert (by_label["retried"], by_label["already_retried"]) == (2, 2)
    assert sorted(by_label["new_task_ids"]) == sorted(str(t.id) for t in Task.objects.filter(retry_of_id__in=retries))
    assert {i: len(r) for i, r in _retries_of([*ended, *retries]).items()} == {i: 1 for i in [*ended, *retries]}


def test_two_calls_at_once_over_the_same_tasks_retry_each_task_once(alice):
    ended = _failed(alice, 6)
    answers: list[Any] = []

    def call(order: list[str]) -> None:
        from django.db import connection
        try:
            answers.append(services.retry_many(tasks=selectors.tasks_for(alice), task_ids=order, chunk=2, by=alice))
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(ids,)) for ids in (ended, ended[::-1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(answers) == 2
    assert {i: len(r) for i, r in _retries_of(ended).items()} == {i: 1 for i in ended}
    assert sorted(a.retried for a in answers) in ([0, 6], [1, 5], [2, 4], [3, 3])
    assert sum(a.retried for a in answers) == 6 and answers[0].retries == answers[1].retries


def test_a_filter_never_retries_the_retries_it_made_itself(alice, monkeypatch):
    # A worker that fails each chunk's new tasks at once, before the next chunk is read: they match the
    # filter (FAILED, the same label) by then, but were made by this call.
    ended = _failed(alice, 5)
    real = services._retry_now

    def failing_at_once(task_ids: list[str]) -> Any:
        done = real(task_ids)
        _give_up(done.new_task_ids)
        return done

    monkeypatch.setattr(services, "_retry_now", failing_at_once)
    counts = services.retry_many(tasks=selectors.tasks_for(alice).filter(labels__contains=["sweep-42"],
                                                                          status=Status.FAILED), chunk=2, by=alice)

    assert counts.retried == 5 and sorted(counts.retries) == sorted(ended)
    assert {i: len(r) for i, r in _retries_of(ended).items()} == {i: 1 for i in ended}
    assert Task.objects.filter(retry_of_id__in=counts.new_task_ids).count() == 0


# --- refused -------------------------------------------------------------------------------------

REFUSED = {
    "neither": ({}, "task_ids"),
    "both": ({"task_ids": [str(uuid.uuid4())], "filters": {"label": "x", "status": "FAILED"}}, "filters"),
    "ids not a list": ({"task_ids": "abc"}, "task_ids"),
    "no ids": ({"task_ids": []}, "task_ids"),
    "a bad id": ({"task_ids": [str(uuid.uuid4()), "not-a-uuid"]}, "task_ids[1]"),
    "too many ids": ({"task_ids": [str(uuid.uuid4()) for _ in range(1001)]}, "task_ids"),
    "empty filters": ({"filters": {}}, "filters"),
    "filters not an object": ({"filters": ["FAILED"]}, "filters"),
    "no status": ({"filters": {"label": "sweep-42"}}, "filters.status"),
    "an empty status": ({"filters": {"label": "sweep-42", "status": []}}, "filters.status"),
    "a status not final": ({"filters": {"label": "sweep-42", "status": ["FAILED", "RUNNING"]}}, "filters.status"),
    "a pending status": ({"filters": {"status": "PENDING"}}, "filters.status"),
    "an unknown status": ({"filters": {"status": "BROKEN"}}, "filters.status"),
    "an unknown filter": ({"filters": {"status": "FAILED", "lable": "x"}}, "filters.lable"),
    "a NUL": ({"filters": {"status": "FAILED", "queue": "de\x00fault"}}, "filters.queue"),
}


@pytest.mark.parametrize("body, field", REFUSED.values(), ids=REFUSED.keys())
def test_bad_input_is_a_400_naming_the_field_and_retries_nothing(alice, api, body, field):
    ended = _failed(alice, 1)

    response = api(alice).post(URL, body, format="json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error
    assert _retries_of(ended) == {ended[0]: []}


def test_bulk_retries_count_with_bulk_cancels_against_the_batch_limit(alice, api, settings):
    from tests.edge.test_rate_limits import assert_limited, clear_of_window_edge

    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "batch": 2}
    ended = _failed(alice, 1)
    client = api(alice)
    clear_of_window_edge(f"user:{alice.pk}")
    assert client.post("/api/v1/tasks/cancel/", {"task_ids": ended}, format="json").status_code == 200
    assert client.post(URL, {"task_ids": ended}, format="json").status_code == 201
    assert_limited(client.post(URL, {"task_ids": ended}, format="json"), f"user:{alice.pk}")
    assert client.post(f"/api/v1/tasks/{ended[0]}/retry/").status_code == 201  # a single retry: a submit


# --- chunks --------------------------------------------------------------------------------------

@pytest.fixture
def chunks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Each chunk a bulk retry hands on (``spy_on_chunks``)."""
    return spy_on_chunks(monkeypatch, "_retry_now")


def test_a_filter_is_retried_a_chunk_at_a_time_each_one_insert_in_its_own_transaction(
        alice, chunks, monkeypatch):
    ended = _failed(alice, 5)
    inserts: list[int] = []
    real_bulk_create = Task.objects.bulk_create

    def counting(objs: list[Task], *args: Any, **kwargs: Any) -> Any:
        inserts.append(len(objs))
        return real_bulk_create(objs, *args, **kwargs)

    monkeypatch.setattr(Task.objects, "bulk_create", counting)

    counts = services.retry_many(tasks=selectors.tasks_for(alice).filter(status=Status.FAILED), chunk=2, by=alice)

    assert counts.retried == 5 and list(counts.retries) == sorted(ended)
    assert chunks == [(2, False), (2, False), (1, False)] and inserts == [2, 2, 1]
    assert all(len(r) == 1 for r in _retries_of(ended).values())


def test_ids_are_retried_a_chunk_at_a_time_and_a_second_call_makes_nothing(alice, chunks):
    ended = _failed(alice, 3)
    nobody = str(uuid.uuid4())
    ids = [ended[0], nobody, ended[1], ended[2]]

    counts = services.retry_many(tasks=selectors.tasks_for(alice), task_ids=ids, chunk=2, by=alice)
    again = services.retry_many(tasks=selectors.tasks_for(alice), task_ids=ids, chunk=2, by=alice)

    assert (counts.retried, counts.not_found, counts.already_retried) == (3, [nobody], 0)
    assert chunks == [(1, False), (2, False)] * 2
    assert (again.retries, again.not_found, again.retried, again.already_retried) == (counts.retries, [nobody], 0, 3)


def test_a_task_retried_twice_is_answered_with_its_latest_retry(alice):
    [ended] = _failed(alice, 1)
    first, _ = services.retry(task_id=ended, by=alice)
    latest, _ = services.retry(task_id=ended, by=alice)  # the single retry: always a new task
    Task.objects.filter(id=first.id).update(created_at=latest.created_at.replace(year=2000))

    counts = services.retry_many(tasks=selectors.tasks_for(alice), task_ids=[ended], by=alice)

    assert (counts.retries, counts.retried, counts.already_retried) == ({ended: str(latest.id)}, 0, 1)


def test_a_chunk_run_again_after_a_deadlock_is_counted_once(alice, monkeypatch):
    ended = _failed(alice, 2)
    real, runs = services._retry_now.__wrapped__, []

    def deadlocked_once(task_ids: list[str]) -> Any:
        done = real(task_ids)
        runs.append(len(done.new_task_ids))
        if len(runs) == 1:  # as PostgreSQL picking this transaction as a deadlock's victim at its end
            import psycopg
            from django.db import OperationalError
            raise OperationalError("deadlock detected") from psycopg.errors.DeadlockDetected("deadlock detected")
        return done

    monkeypatch.setattr(services, "_retry_now", transitions.atomic_retrying_deadlocks(deadlocked_once))
    counts = services.retry_many(tasks=selectors.tasks_for(alice), task_ids=ended, by=alice)

    assert runs == [2, 2]
    assert (counts.retried, counts.already_retried) == (2, 0)
    assert sorted(counts.new_task_ids) == sorted(str(t.id) for t in Task.objects.filter(retry_of_id__in=ended))
