"""The user's view: REST submit → real worker → signed webhooks at a real receiver on 127.0.0.1,
retries, order, redelivery, deletion, rollback. Deliveries run on their own ``webhooks`` worker."""
from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from tests.conftest import wait_until
from tests.webhooks.conftest import Reply

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WEBHOOK_EVENTS_OF_NOOP = ["task.created", "task.queued", "task.started", "task.succeeded"]


def subscribe(client, receiver, events=("task.*",)) -> dict:
    response = client.post("/api/v1/webhooks/", {"url": receiver.url, "events": list(events)}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def submit(client, algorithm="demo.noop", params=None, **extra) -> dict:
    response = client.post("/api/v1/tasks/", {"algorithm": algorithm, "params": params or {}, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def all_succeeded(client, hook_id) -> list[dict]:
    rows = client.get(f"/api/v1/webhooks/{hook_id}/deliveries/").json()["results"]
    return rows if rows and all(d["status"] == "SUCCEEDED" for d in rows) else []


def arrived(receiver, task_id, event="task.succeeded"):
    return [r for r in receiver.ok() if r.json["task_id"] == task_id and r.json["event"] == event]


def stored_events(task_id) -> list[str]:
    from jobs.models import TaskEvent
    from webhooks.outbox import TASK_EVENTS

    return [e for e in TaskEvent.objects.filter(task_id=task_id).order_by("seq").values_list("event", flat=True)
            if e in TASK_EVENTS]


def deduped(receiver, task_id) -> list[dict]:
    seen, out = set(), []
    for r in receiver.ok():
        if r.json["task_id"] == task_id and r.headers["webhook-id"] not in seen:
            seen.add(r.headers["webhook-id"])
            out.append(r.json)
    return out


def test_task_events_arrive_signed_in_order_and_only_for_the_owner(webhooks_worker, alice, bob, api, make_receiver):
    alices, bobs = make_receiver(), make_receiver()
    hook = subscribe(api(alice), alices)
    bob_hook = subscribe(api(bob), bobs)

    task = submit(api(alice), "demo.hello", {"seconds": 0.2, "steps": 2})
    wait_until(lambda: arrived(alices, task["id"]), message="task.succeeded at alice's receiver")

    bodies = [Webhook(hook["secret"]).verify(r.body, r.headers) for r in alices.ok()]  # raises if not signed right
    assert [b["event"] for b in bodies] == stored_events(task["id"])
    assert [b["event"] for b in bodies][:3] == ["task.created", "task.queued", "task.started"]
    assert bodies[-1]["event"] == "task.succeeded" and bodies[-1]["status"] == "SUCCEEDED"
    assert "task.log" not in [b["event"] for b in bodies]
    assert [b["seq"] for b in bodies] == sorted({b["seq"] for b in bodies})
    assert all(r.headers["user-agent"].startswith("Conveyor-Webhooks/") for r in alices.ok())
    assert all(r.headers["content-type"] == "application/json" for r in alices.ok())
    assert len({r.headers["webhook-id"] for r in alices.ok()}) == len(bodies)

    # The receiver answered before the worker recorded the answer: wait for the log to say so.
    deliveries = wait_until(lambda: all_succeeded(api(alice), hook["id"]), message="the delivery log")
    assert len(deliveries) == len(bodies)
    # Bob subscribed to task.* too, but only his own tasks reach him: no delivery was even written.
    assert api(bob).get(f"/api/v1/webhooks/{bob_hook['id']}/deliveries/").json()["results"] == []
    assert bobs.requests == []


def test_receiver_failing_twice_then_succeeding_gets_one_event_with_three_attempts_logged(
        webhooks_worker, alice, api, receiver):
    client = api(alice)
    hook = subscribe(client, receiver, ["task.succeeded"])
    receiver.respond = [Reply(500, body=b"boom"), Reply(503, {"retry-after": "0"})]

    task = submit(client)
    wait_until(lambda: arrived(receiver, task["id"]), message="the third attempt to succeed")

    assert len(receiver.requests) == 3
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1  # stable across retries
    for r in receiver.requests:
        assert Webhook(hook["secret"]).verify(r.body, r.headers)["event"] == "task.succeeded"
    [delivery] = wait_until(lambda: all_succeeded(client, hook["id"]), message="the delivery log")
    assert delivery["webhook_id"] == receiver.requests[0].headers["webhook-id"]
    detail = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/").json()
    assert detail["status"] == "SUCCEEDED" and detail["attempts"] == 3
    log = detail["attempt_log"]
    assert [(a["outcome"], a["status_code"]) for a in log] == [("RETRY", 500), ("RETRY", 503), ("SUCCEEDED", 200)]
    assert log[0]["response_body"] == "boom"
    assert all(a["duration_ms"] is not None and a["finished_at"] for a in log)


def test_receiver_down_for_a_while_then_up_gets_every_event_in_order(webhooks_worker, alice, api, receiver):
    from webhooks.models import Delivery

    client = api(alice)
    subscribe(client, receiver)
    receiver.stop()

    task = submit(client)
    wait_until(lambda: Delivery.objects.filter(task_id=task["id"], attempts__gte=2).exists(),
               message="failed attempts while the receiver is down")
    receiver.start()  # same port

    wait_until(lambda: arrived(receiver, task["id"]), message="task.succeeded after the receiver came back")
    assert [b["event"] for b in deduped(receiver, task["id"])] == stored_events(task["id"])


def test_a_4xx_answer_is_not_retried(webhooks_worker, alice, api, receiver):
    client = api(alice)
    hook = subscribe(client, receiver, ["task.created"])
    receiver.default = Reply(400, body=b"bad payload")

    submit(client)

    def failed():
        rows = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries/").json()["results"]
        return rows and rows[0]["status"] == "FAILED" and rows[0]
    delivery = wait_until(failed, message="the delivery to fail")
    assert delivery["attempts"] == 1 and delivery["last_status_code"] == 400
    assert len(receiver.requests) == 1


def test_slow_receiver_does_not_hold_up_task_execution(webhooks_worker, alice, api, receiver):
    client = api(alice)
    subscribe(client, receiver)
    receiver.gate.clear()  # the receiver accepts requests but answers none until the gate opens

    tasks = [submit(client) for _ in range(3)]
    for task in tasks:
        wait_until(lambda: client.get(f"/api/v1/tasks/{task['id']}/").json()["status"] == "SUCCEEDED",
                   message="tasks to finish while the receiver hangs")
    assert receiver.ok() == []

    receiver.gate.set()
    for task in tasks:
        wait_until(lambda: arrived(receiver, task["id"]), timeout=60, message="every task.succeeded")
        assert [b["event"] for b in deduped(receiver, task["id"])] == stored_events(task["id"])


def test_after_rotation_deliveries_verify_with_the_old_and_the_new_secret(webhooks_worker, alice, api, receiver):
    client = api(alice)
    old = subscribe(client, receiver, ["task.succeeded"])
    new = client.post(f"/api/v1/webhooks/{old['id']}/rotate-secret/").json()

    task = submit(client)
    [request] = wait_until(lambda: arrived(receiver, task["id"]), message="the delivery")

    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(new["secret"]).verify(request.body, request.headers)
    Webhook(old["secret"]).verify(request.body, request.headers)


def test_deleting_a_webhook_stops_its_deliveries(webhooks_worker, alice, api, make_receiver):
    from webhooks.models import Delivery

    client = api(alice)
    failing, sentinel = make_receiver(), make_receiver()
    failing.default = Reply(503)
    hook = subscribe(client, failing)
    task = submit(client)
    wait_until(lambda: len(failing.requests) >= 2, message="retries to a failing receiver")

    assert client.delete(f"/api/v1/webhooks/{hook['id']}/").status_code == 204
    seen = len(failing.requests)
    assert not Delivery.objects.filter(subscription_id=hook["id"]).exists()

    # Later events and retry ticks go by: the sentinel's receiver sees a whole task meanwhile.
    subscribe(client, sentinel)
    later = submit(client)
    wait_until(lambda: arrived(sentinel, later["id"]), message="the sentinel delivery")
    assert len(failing.requests) <= seen + 1  # at most the attempt that was already on the wire
    assert task["id"]


def test_a_rolled_back_state_change_sends_nothing(webhooks_worker, alice, api, receiver):
    from django.db import transaction

    from jobs import services
    from webhooks.models import Delivery

    client = api(alice)
    subscribe(client, receiver)
    rolled_back = []
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            task, _ = services.submit(owner=alice, spec=services.build_spec(algorithm="demo.noop"))
            rolled_back.append(str(task.id))
            assert Delivery.objects.filter(task_id=task.id).exists()  # written in the same transaction
            raise RuntimeError("roll back")
    assert not Delivery.objects.filter(task_id=rolled_back[0]).exists()

    later = submit(client)
    wait_until(lambda: arrived(receiver, later["id"]), message="a committed task's events")
    assert rolled_back[0] not in {r.json["task_id"] for r in receiver.requests}


def test_redeliver_sends_the_same_message_again(webhooks_worker, alice, bob, api, receiver):
    client = api(alice)
    hook = subscribe(client, receiver, ["task.succeeded"])
    task = submit(client)
    wait_until(lambda: arrived(receiver, task["id"]), message="the first delivery")
    [delivery] = wait_until(lambda: all_succeeded(client, hook["id"]), message="the delivery log")

    path = f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver/"
    assert api(bob).post(path).status_code == 404
    response = client.post(path)
    assert response.status_code == 202, response.content

    wait_until(lambda: len(arrived(receiver, task["id"])) == 2, message="the redelivery")
    first, second = arrived(receiver, task["id"])
    assert first.headers["webhook-id"] == second.headers["webhook-id"] and first.body == second.body
    detail = wait_until(lambda: (d := client.get(f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/")
                                 .json())["status"] == "SUCCEEDED" and d["attempts"] == 2 and d,
                        message="the second attempt logged")
    assert [a["outcome"] for a in detail["attempt_log"]] == ["SUCCEEDED", "SUCCEEDED"]
