"""Remote control answers 202 only when the worker took the command: a worker that is not alive is a
409, no reply a 504, a reply carrying an error a 409, an unknown queue for add_consumer a 400."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from queueing import control
from queueing.models import WorkerRecord
from tests.queueing.conftest import make_queue

HOST = "w1@host"


class FakeControl:
    """Celery's ``app.control``: records what was sent and answers with ``replies``."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        self.replies = replies
        self.sent: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, action: str) -> Any:
        def send(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            self.sent.append((action, args, kwargs))
            return self.replies
        return send


@pytest.fixture
def worker(db: None) -> WorkerRecord:
    now = timezone.now()
    return WorkerRecord.objects.create(hostname=HOST, queues=["default"], concurrency=2, pool="prefork", pid=1,
                                       version="celery 5", last_heartbeat=now, started_at=now)


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> FakeControl:
    fake = FakeControl([{HOST: {"ok": "done"}}])
    monkeypatch.setattr(control.app, "control", fake)
    return fake


def post(api: Any, user: Any, action: str, body: dict | None = None) -> Any:
    return api(user).post(f"/api/v1/workers/{HOST}/{action}/", body or {}, format="json")


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    return response.json()["error"]


def test_a_live_worker_that_answers_ok_is_202(api, olga, worker, replies):
    response = post(api, olga, "pool_grow", {"n": 2})
    assert response.status_code == 202 and response.json()["replies"] == [{HOST: {"ok": "done"}}]
    assert replies.sent[0][0] == "pool_grow"


@pytest.mark.parametrize("change", [{"stopped_at": timezone.now()}, {"lost_at": timezone.now()},
                                    {"last_heartbeat": timezone.now() - timedelta(hours=1)}],
                         ids=["stopped", "lost", "stale"])
def test_a_worker_that_is_not_alive_is_409_naming_it(api, olga, worker, replies, change):
    WorkerRecord.objects.filter(pk=worker.pk).update(**change)
    for action in ("pool_grow", "shutdown"):
        err = error(post(api, olga, action), 409)
        assert err["code"] == "worker_not_alive" and HOST in err["message"]
    assert not replies.sent


def test_no_reply_is_504_and_shutdown_expects_none(api, olga, worker, replies):
    replies.replies = []
    err = error(post(api, olga, "pool_shrink"), 504)
    assert err["code"] == "worker_no_reply" and HOST in err["message"]
    assert post(api, olga, "shutdown").status_code == 202


def test_a_reply_reporting_an_error_is_409_naming_it(api, olga, worker, replies):
    replies.replies = [{HOST: {"error": "pool size cannot go below zero"}}]
    err = error(post(api, olga, "pool_shrink"), 409)
    assert err["code"] == "worker_refused" and "cannot go below zero" in err["message"]


def test_add_consumer_of_an_unknown_queue_is_400_naming_queue(api, olga, worker, replies):
    err = error(post(api, olga, "add_consumer", {"queue": "defualt"}), 400)
    assert "queue" in err["fields"] and "defualt" in err["message"]
    assert not replies.sent
    make_queue("held")
    for queue in ("held", "default", "webhooks"):
        assert post(api, olga, "add_consumer", {"queue": queue}).status_code == 202, queue


def test_shutdown_is_conveyors_command_which_keeps_the_grace_period(api, olga, worker, replies):
    assert post(api, olga, "shutdown").status_code == 202
    action, args, kwargs = replies.sent[-1]
    assert (action, args[0], kwargs["destination"]) == ("broadcast", "conveyor_shutdown", [HOST])


def answering(replies: FakeControl, monkeypatch: pytest.MonkeyPatch, *answers: dict[str, Any]) -> None:
    """The worker's answers, in turn, to what is sent (``broadcast`` of Conveyor's command or ``pool_shrink``)."""
    queue = iter(answers)

    def send(action: str) -> Any:
        return lambda *args, **kwargs: replies.sent.append((action, args, kwargs)) or [{HOST: next(queue)}]
    for action in ("broadcast", "pool_shrink"):
        monkeypatch.setattr(replies, action, send(action), raising=False)


def shrinks(replies: FakeControl) -> list[tuple[str, Any]]:
    """What was sent: ("conveyor", {n, total}) for Conveyor's command, ("celery", n) for Celery's pool_shrink."""
    return [("conveyor", kwargs["arguments"]) if action == "broadcast" else ("celery", kwargs["n"])
            for action, _, kwargs in replies.sent]


def test_pool_shrink_is_decided_by_the_worker_which_refuses_leaving_no_process(api, olga, worker, replies,
                                                                                  monkeypatch):
    # the row says 2 processes; the worker has just been grown to 3 and shrunk to 1 (a heartbeat ago)
    answering(replies, monkeypatch, {"error": "shrinking by 1 would leave no process (it has 1)", "processes": 1,
                                     "would_leave_none": True})
    err = error(post(api, olga, "pool_shrink"), 409)
    assert err["code"] == "conflict"
    assert "no process" in err["message"] and "it has 1" in err["message"] and "shutdown" in err["message"]
    assert shrinks(replies) == [("conveyor", {"n": 1, "total": 1})]


def test_pool_shrink_that_would_leave_no_process_is_409_before_anything_goes(api, olga, worker, replies,
                                                                              monkeypatch):
    answering(replies, monkeypatch, {"error": "shrinking by 2 would leave no process (it has 2)", "processes": 2,
                                     "would_leave_none": True})
    err = error(post(api, olga, "pool_shrink", {"n": 2}), 409)
    assert "pool_shrink by 2" in err["message"] and "it has 2" in err["message"] and "shrank" not in err["message"]
    assert shrinks(replies) == [("conveyor", {"n": 1, "total": 2})]


def test_pool_shrink_goes_one_process_at_a_time_and_says_how_far_it_got(api, olga, worker, replies, monkeypatch):
    answering(replies, monkeypatch, {"ok": "pool will shrink", "processes": 3},
              {"error": "Can't shrink pool. All processes busy!", "processes": 3})

    err = error(post(api, olga, "pool_shrink", {"n": 3}), 409)

    assert err["code"] == "worker_refused"
    assert "by 1 of 3" in err["message"] and "All processes busy" in err["message"]
    assert shrinks(replies) == [("conveyor", {"n": 1, "total": 3}), ("conveyor", {"n": 1, "total": 2})]


def test_a_shrink_part_way_stopped_by_the_last_process_says_how_far_it_got(api, olga, worker, replies,
                                                                            monkeypatch):
    # another request shrank the worker meanwhile: the second step would leave it none
    answering(replies, monkeypatch, {"ok": "pool will shrink", "processes": 2},
              {"error": "shrinking by 1 would leave no process (it has 1)", "processes": 1, "would_leave_none": True})
    err = error(post(api, olga, "pool_shrink", {"n": 2}), 409)
    assert "by 1 of 2" in err["message"] and "no process (it has 1)" in err["message"]


def test_a_worker_without_conveyors_command_gets_celerys_pool_shrink_guarded_by_its_row(api, olga, worker, replies,
                                                                                      monkeypatch):
    """A rolling deploy: this web process is newer than the worker, which answers the KeyError."""
    unknown = {"error": "KeyError('conveyor_pool_shrink')"}
    answering(replies, monkeypatch, unknown, {"ok": "pool will shrink"})
    response = post(api, olga, "pool_shrink")
    assert response.status_code == 202 and response.json()["replies"] == [{HOST: {"ok": "pool will shrink"}}]
    assert shrinks(replies) == [("conveyor", {"n": 1, "total": 1}), ("celery", 1)]

    replies.sent.clear()
    answering(replies, monkeypatch, unknown)
    err = error(post(api, olga, "pool_shrink", {"n": 2}), 409)  # the row says 2
    assert "no process" in err["message"] and "it has 2" in err["message"]
    assert shrinks(replies) == [("conveyor", {"n": 1, "total": 2})]


class FakePool:
    def __init__(self, processes: int, busy: bool = False) -> None:
        self.num_processes, self.busy = processes, busy

    def shrink(self, n: int = 1) -> None:
        if self.busy:
            raise ValueError("Can't shrink pool. All processes busy!")
        self.num_processes -= n


def worker_state(pool: Any, autoscaler: Any = None) -> Any:
    from types import SimpleNamespace

    consumer = SimpleNamespace(pool=pool, controller=SimpleNamespace(autoscaler=autoscaler), prefetch=[])
    consumer._update_prefetch_count = consumer.prefetch.append
    return SimpleNamespace(consumer=consumer)


def test_the_worker_command_shrinks_its_live_pool_and_never_below_one_process():
    from queueing.heartbeat import conveyor_pool_shrink

    state = worker_state(FakePool(2))
    assert conveyor_pool_shrink(state, n=1) == {"ok": "pool will shrink", "processes": 1}
    assert state.consumer.prefetch == [-1]
    refused = conveyor_pool_shrink(state, n=1)
    assert refused["would_leave_none"] and refused["processes"] == 1 and "no process" in refused["error"]
    assert state.consumer.pool.num_processes == 1 and state.consumer.prefetch == [-1]

    state = worker_state(FakePool(3))
    assert conveyor_pool_shrink(state, n=1, total=3)["would_leave_none"]  # the whole request is refused
    assert conveyor_pool_shrink(state, n=1, total=2)["ok"] and state.consumer.pool.num_processes == 2

    busy = conveyor_pool_shrink(worker_state(FakePool(2, busy=True)), n=1)
    assert "All processes busy" in busy["error"] and "would_leave_none" not in busy
    assert "autoscale" in conveyor_pool_shrink(worker_state(FakePool(4), autoscaler=object()), n=1)["error"]


@pytest.mark.parametrize("kind", ["solo", "thread"])
def test_the_worker_command_refuses_pools_that_cannot_shrink(kind):
    """Solo and threads pools have no ``shrink`` in Celery: refused, whatever their size."""
    import importlib

    from queueing.heartbeat import conveyor_pool_shrink

    pool = importlib.import_module(f"celery.concurrency.{kind}").TaskPool(limit=4)
    answer = conveyor_pool_shrink(worker_state(pool), n=1)
    assert "cannot shrink" in answer["error"] and answer["cannot_shrink"]


def test_cancel_consumer_of_a_queue_the_worker_does_not_consume_is_400_naming_queue(api, olga, worker, replies):
    err = error(post(api, olga, "cancel_consumer", {"queue": "zzz"}), 400)
    assert "queue" in err["fields"] and "zzz" in err["message"] and "default" in err["message"]
    assert not replies.sent
    assert post(api, olga, "cancel_consumer", {"queue": "default"}).status_code == 202
