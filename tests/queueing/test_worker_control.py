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


def test_pool_shrink_that_would_leave_no_process_is_409_and_nothing_is_sent(api, olga, worker, replies):
    err = error(post(api, olga, "pool_shrink", {"n": 2}), 409)  # the worker has 2
    assert "no process" in err["message"] and "shutdown" in err["message"]
    assert not replies.sent


def test_pool_shrink_goes_one_process_at_a_time_and_says_how_far_it_got(api, olga, worker, replies, monkeypatch):
    WorkerRecord.objects.filter(pk=worker.pk).update(concurrency=4)
    answers = iter([[{HOST: {"ok": "pool will shrink"}}], [{HOST: {"error": "Can't shrink pool. All processes busy!"}}]])
    monkeypatch.setattr(replies, "pool_shrink", lambda **kwargs: replies.sent.append(("pool_shrink", (), kwargs))
                        or next(answers), raising=False)

    err = error(post(api, olga, "pool_shrink", {"n": 3}), 409)

    assert err["code"] == "worker_refused"
    assert "by 1 of 3" in err["message"] and "All processes busy" in err["message"]
    assert [kwargs["n"] for _, _, kwargs in replies.sent] == [1, 1]


def test_cancel_consumer_of_a_queue_the_worker_does_not_consume_is_400_naming_queue(api, olga, worker, replies):
    err = error(post(api, olga, "cancel_consumer", {"queue": "zzz"}), 400)
    assert "queue" in err["fields"] and "zzz" in err["message"] and "default" in err["message"]
    assert not replies.sent
    assert post(api, olga, "cancel_consumer", {"queue": "default"}).status_code == 202
