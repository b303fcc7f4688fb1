"""The queue order: what the listing shows is what the dispatcher starts (no worker needed)."""
from __future__ import annotations

import pytest

from jobs.models import Status, Task
from queueing import dispatch
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db


def submit(client, label: str, priority, queue: str = "q1", **extra) -> str:
    body = {"algorithm": "demo.noop", "priority": priority, "queue": queue, "labels": [label], **extra}
    response = client.post("/api/v1/tasks/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def listing(client, queue: str = "q1") -> list[str]:
    response = client.get(f"/api/v1/queues/{queue}/tasks/")
    assert response.status_code == 200, response.content
    tasks = response.json()["tasks"]
    assert [t["waiting"]["position"] for t in tasks] == list(range(1, len(tasks) + 1))
    return [t["labels"][0] for t in tasks]


def start_order(queue: str = "q1") -> list[str]:
    """Dispatch one task at a time (concurrency 1), finishing each, and record the order."""
    order = []
    while True:
        assert dispatch.dispatch([queue]) in (0, 1)
        task = Task.objects.filter(queue=queue, status=Status.QUEUED).first()
        if task is None:
            return order
        order.append(task.labels[0])
        Task.objects.filter(id=task.id).update(status=Status.SUCCEEDED)


def test_issue_example_reorder_and_priority_give_start_order_d_b_a_c(olga, api):
    make_queue("q1", concurrency=1, paused=True)
    client = api(olga)
    a = submit(client, "a", 1)
    submit(client, "b", 9)
    submit(client, "c", 5)
    d = submit(client, "d", 5)

    assert client.patch(f"/api/v1/tasks/{a}/priority/", {"priority": 8}, format="json").status_code == 200
    response = client.post("/api/v1/queues/q1/reorder/", {"task_ids": [d]}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["pinned"] == [d]

    assert listing(client) == ["d", "b", "a", "c"]
    make_queue("q1", paused=False)
    assert start_order() == ["d", "b", "a", "c"]


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "client-bound"])
@pytest.mark.parametrize("cap", [0, 5], ids=["uncapped", "owner-cap"])
def test_one_pass_fills_the_window_in_the_listings_order_and_sends_in_that_order(
        olga, api, settings, monkeypatch, django_capture_on_commit_callbacks, prepared, cap):
    """Several slots free at once: the dispatcher queues the first tasks of the listing, as many as
    room, and hands them to the broker in that order (with an owner cap too, whose candidates are
    picked in Python)."""
    settings.DB_PREPARED_STATEMENTS = prepared
    make_queue("q1", concurrency=5, user_concurrency=cap, paused=True)
    client = api(olga)
    for label, priority in [("a", 1), ("b", 9), ("c", 5), ("d", 5), ("e", 8), ("f", 2)]:
        submit(client, label, priority)
    pin = Task.objects.get(queue="q1", labels=["d"]).id
    assert client.post("/api/v1/queues/q1/reorder/", {"task_ids": [str(pin)]}, format="json").status_code == 200
    assert listing(client) == ["d", "b", "e", "c", "f", "a"]
    make_queue("q1", paused=False)
    sent: list[str] = []
    monkeypatch.setattr(dispatch, "send", lambda queue, ids: sent.extend(ids))

    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch.dispatch(["q1"]) == 5

    labels = {str(t.id): t.labels[0] for t in Task.objects.filter(queue="q1")}
    assert [labels[i] for i in sent] == ["d", "b", "e", "c", "f"]
    assert Task.objects.get(queue="q1", labels=["a"]).status == Status.PENDING
    assert Task.objects.filter(queue="q1", status=Status.QUEUED).count() == 5


def test_priority_names_and_order_without_reorder(alice, api):
    make_queue("q1", concurrency=1, paused=True)
    client = api(alice)
    submit(client, "low", "low")
    submit(client, "crit", "critical")
    submit(client, "normal1", "normal")
    submit(client, "high", "high")
    submit(client, "normal2", 5)
    assert listing(client) == ["crit", "high", "normal1", "normal2", "low"]
    make_queue("q1", paused=False)
    assert start_order() == ["crit", "high", "normal1", "normal2", "low"]


def test_reorder_to_a_position_pins_everything_up_to_it(olga, api):
    make_queue("q1", concurrency=1, paused=True)
    client = api(olga)
    ids = {label: submit(client, label, p) for label, p in [("p9", 9), ("p7", 7), ("p5", 5), ("p3", 3), ("p1", 1)]}

    response = client.post("/api/v1/queues/q1/reorder/", {"task_id": ids["p1"], "position": 2}, format="json")
    assert response.status_code == 200, response.content
    assert listing(client) == ["p9", "p1", "p7", "p5", "p3"]

    # A later, higher-priority task still comes after the pinned head.
    submit(client, "late9", 9)
    assert listing(client) == ["p9", "p1", "late9", "p7", "p5", "p3"]

    # task_ids go in front of earlier pins, in the given order.
    client.post("/api/v1/queues/q1/reorder/", {"task_ids": [ids["p3"], ids["p5"]]}, format="json")
    assert listing(client) == ["p3", "p5", "p9", "p1", "late9", "p7"]

    # Moving a pinned task back keeps the rest of the pinned head in its order.
    client.post("/api/v1/queues/q1/reorder/", {"task_id": ids["p3"], "position": 4}, format="json")
    assert listing(client) == ["p5", "p9", "p1", "p3", "late9", "p7"]

    make_queue("q1", paused=False)
    assert start_order() == ["p5", "p9", "p1", "p3", "late9", "p7"]


def test_reorder_rejects_tasks_that_are_not_waiting(olga, alice, api):
    make_queue("q1", concurrency=1)
    make_queue("q2", concurrency=1, paused=True)
    client = api(olga)
    queued = submit(client, "x", 5)
    dispatch.dispatch(["q1"])
    assert Task.objects.get(id=queued).status == Status.QUEUED
    other = submit(client, "y", 5, queue="q2")

    response = client.post("/api/v1/queues/q1/reorder/", {"task_ids": [queued]}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_waiting"
    response = client.post("/api/v1/queues/q1/reorder/", {"task_ids": [other]}, format="json")
    assert response.status_code == 400
    response = client.post("/api/v1/queues/q1/reorder/", {"task_id": other}, format="json")
    assert response.status_code == 400
    assert client.post("/api/v1/queues/nope/reorder/", {"task_ids": [other]}, format="json").status_code == 404


def test_round_robin_between_owners_within_a_priority(alice, bob, api):
    make_queue("q1", concurrency=1, paused=True)
    a_client, b_client = api(alice), api(bob)
    batch = [{"algorithm": "demo.noop", "queue": "q1", "labels": [f"a{i}"]} for i in range(30)]
    assert a_client.post("/api/v1/tasks/batch/", {"tasks": batch}, format="json").status_code == 201
    make_queue("q1", paused=False)
    # Alice's batch starts running; then Bob submits one task.
    for _ in range(5):
        dispatch.dispatch(["q1"])
        Task.objects.filter(queue="q1", status=Status.QUEUED).update(status=Status.SUCCEEDED)
    submit(b_client, "bob", 5)
    order = start_order()
    assert order.index("bob") <= 1, order[:5]
    assert len(order) == 26


def test_single_submits_take_turns_between_owners_as_a_batch_does(alice, bob, olga, api):
    """A single submit gets its round-robin number inside its own INSERT, a batch by a stamp after its
    INSERT: the same turns either way."""
    for queue, single in (("q1", True), ("q2", False)):
        make_queue(queue, concurrency=1, paused=True)
        for client, name, n in ((api(alice), "a", 3), (api(bob), "b", 2)):
            if single:
                for i in range(n):
                    submit(client, f"{name}{i}", 5, queue=queue)
            else:
                batch = [{"algorithm": "demo.noop", "queue": queue, "labels": [f"{name}{i}"]} for i in range(n)]
                assert client.post("/api/v1/tasks/batch/", {"tasks": batch}, format="json").status_code == 201
        assert listing(api(olga), queue) == ["a0", "b0", "a1", "b1", "a2"], queue


def test_an_owner_at_the_cap_with_a_long_backlog_ahead_does_not_keep_others_from_free_slots(alice, bob, api, settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "DISPATCH_SCAN_AHEAD": 2}
    make_queue("q1", concurrency=4, user_concurrency=1)
    for i in range(8):  # her first starts; the rest wait behind her cap, ahead of everyone by priority
        submit(api(alice), f"a{i}", "critical")
    assert Task.objects.filter(queue="q1", status=Status.QUEUED).count() == 1

    bobs = submit(api(bob), "b", "low")

    assert Task.objects.get(id=bobs).status == Status.QUEUED  # a free slot, and he is below his cap
    assert Task.objects.filter(queue="q1", status=Status.QUEUED).count() == 2
    assert dispatch.dispatch(["q1"]) == 0  # the other two slots stay free: only alice waits, at her cap


def test_the_look_beyond_capped_owners_does_not_take_a_task_already_picked(alice, bob, api, settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "DISPATCH_SCAN_AHEAD": 2}
    make_queue("q1", concurrency=4, user_concurrency=2, paused=True)  # all waits until the resume below
    submit(api(bob), "b0", "critical")  # first in line: among the first candidates, picked there
    for i in range(6):
        submit(api(alice), f"a{i}", "critical")
    submit(api(bob), "b1", "low")  # beyond them: found by the look past alice's backlog
    make_queue("q1", paused=False)

    assert dispatch.dispatch(["q1"]) == 4  # alice 2 (her cap), bob 2: every slot, each task once
    queued = Task.objects.filter(queue="q1", status=Status.QUEUED)
    assert sorted(t.labels[0] for t in queued) == ["a0", "a1", "b0", "b1"]


def test_the_look_beyond_capped_owners_fills_every_free_slot_in_one_pass(alice, api, settings):
    from tests.conftest import _user

    settings.CONVEYOR = {**settings.CONVEYOR, "DISPATCH_SCAN_AHEAD": 2}
    make_queue("q1", concurrency=6, user_concurrency=1)
    for i in range(6):  # her first starts; the rest wait behind her cap, ahead of everyone by priority
        submit(api(alice), f"a{i}", 9)
    make_queue("q1", paused=True)
    for n, priority in enumerate([8, 7, 6, 5, 4]):  # five owners, three tasks each, one priority each
        owner = _user(f"u{n}")
        for i in range(3):
            submit(api(owner), f"u{n}-{i}", priority)
    make_queue("q1", paused=False)

    assert dispatch.dispatch(["q1"]) == 5  # each owner its one slot, in one pass (not one a pass)
    queued = Task.objects.filter(queue="q1", status=Status.QUEUED).exclude(owner=alice)
    assert sorted(t.labels[0] for t in queued) == [f"u{n}-0" for n in range(5)]


def test_a_pinned_task_handed_back_by_a_pause_is_still_first(alice, olga, api):
    make_queue("q1", concurrency=1, paused=True)
    x, y = submit(api(alice), "x", 1), submit(api(alice), "y", 9)
    ops = api(olga)
    assert ops.post("/api/v1/queues/q1/reorder/", {"task_id": x, "position": 1}, format="json").status_code == 200
    assert ops.post("/api/v1/queues/q1/resume/").status_code == 200
    dispatch.dispatch(["q1"])
    assert Task.objects.get(id=x).status == Status.QUEUED  # in the broker, not claimed yet

    assert ops.post("/api/v1/queues/q1/pause/").status_code == 200  # it comes back to PENDING

    assert listing(ops) == ["x", "y"]  # still where the operator put it, ahead of priority 9
    assert start_order() == []  # paused
    make_queue("q1", paused=False)
    assert start_order() == ["x", "y"]


def test_a_reorder_made_while_a_pinned_task_was_dispatched_stays_ahead_of_it_when_it_comes_back(alice, olga, api):
    make_queue("q1", concurrency=1, paused=True)
    x, a, b = submit(api(alice), "x", 9), submit(api(alice), "a", 1), submit(api(alice), "b", 1)
    ops = api(olga)
    assert ops.post("/api/v1/queues/q1/reorder/", {"task_id": x, "position": 1}, format="json").status_code == 200
    assert ops.post("/api/v1/queues/q1/resume/").status_code == 200
    dispatch.dispatch(["q1"])
    assert Task.objects.get(id=x).status == Status.QUEUED
    assert ops.post("/api/v1/queues/q1/reorder/", {"task_ids": [a, b]}, format="json").status_code == 200

    assert ops.post("/api/v1/queues/q1/pause/").status_code == 200  # x comes back with its older pin

    assert listing(ops) == ["a", "b", "x"]  # the newest reorder first, the older pin next
    mine = api(alice).get("/api/v1/queues/q1/tasks/").json()["tasks"]
    assert [(t["labels"][0], t["waiting"]["position"]) for t in mine] == [("a", 1), ("b", 2), ("x", 3)]
    make_queue("q1", paused=False)
    assert start_order() == ["a", "b", "x"]


def test_a_queued_task_given_a_new_priority_takes_its_turn_there_when_it_comes_back(alice, bob, olga, api):
    make_queue("q1", concurrency=1)
    x = submit(api(alice), "x", 5)  # dispatched at once: QUEUED
    Task.objects.filter(id=x).update(fair_seq=50)  # as the 50th of her batch would be
    make_queue("q1", paused=True)
    submit(api(bob), "y", 9)
    submit(api(bob), "y2", 9)
    assert api(alice).patch(f"/api/v1/tasks/{x}/priority/", {"priority": 9}, format="json").status_code == 200

    assert api(olga).post("/api/v1/queues/q1/pause/").status_code == 200  # x comes back to PENDING

    assert listing(api(olga)) == ["x", "y", "y2"]  # round-robin at 9 with bob, not behind all of his


def test_priority_change_restamps_round_robin_and_is_409_once_running(alice, bob, olga, api):
    make_queue("q1", concurrency=1, paused=True)
    a = submit(api(alice), "a", 5)
    # bob cannot see alice's task; an operator can change it.
    assert api(bob).patch(f"/api/v1/tasks/{a}/priority/", {"priority": 9}, format="json").status_code == 404
    response = api(olga).patch(f"/api/v1/tasks/{a}/priority/", {"priority": "critical"}, format="json")
    assert response.status_code == 200 and response.json()["priority"] == 9
    bad = api(alice).patch(f"/api/v1/tasks/{a}/priority/", {"priority": 10}, format="json")
    assert bad.status_code == 400

    Task.objects.filter(id=a).update(status=Status.RUNNING)
    response = api(alice).patch(f"/api/v1/tasks/{a}/priority/", {"priority": 1}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_transition"


@pytest.mark.django_db(transaction=True)  # another session holds the task's row
def test_a_task_the_dispatcher_stepped_over_while_its_priority_changed_is_dispatched_after(alice, api):
    from tests.conftest import another_session

    make_queue("q1", concurrency=2, paused=True)
    task = submit(api(alice), "a", 5)
    make_queue("q1", paused=False)
    holder = another_session()  # what change_priority's transaction holds while a dispatch runs
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM jobs_task WHERE id = %s FOR UPDATE", [task])
        assert dispatch.dispatch(["q1"]) == 0  # SKIP LOCKED: stepped over, with a free slot
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert api(alice).patch(f"/api/v1/tasks/{task}/priority/", {"priority": 7}, format="json").status_code == 200
    assert Task.objects.get(id=task).status == Status.QUEUED  # not left for the beat's next tick
