"""The statistics counters: a stripe per database backend, and the fold of ended backends' rows into
stripe 0 (queueing/counters.py), with every count exact throughout."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import Count, Sum
from django.utils import timezone

from jobs import services
from jobs.models import Status, Task
from queueing import counters
from queueing.models import QueueCount, TaskMinuteCount
from queueing.selectors import queue_state
from tests.conftest import another_session, wait_until
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db(transaction=True)


def my_pid() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def truth(queue: str) -> dict[str, int]:
    return {s: Task.objects.filter(queue=queue, status=s).count() for s in ("PENDING", "QUEUED", "RUNNING")}


def minute_total(queue: str) -> dict[str, int]:
    rows = TaskMinuteCount.objects.filter(queue=queue).values_list("status").annotate(n=Sum("n")).order_by()
    return {status: n for status, n in rows if n}


def minute_truth(queue: str) -> dict[str, int]:
    rows = Task.objects.filter(queue=queue).values_list("status").annotate(n=Count("id")).order_by()
    return dict(rows)


def submit(owner: Any, queue: str, n: int) -> list[str]:
    spec = services.build_spec(algorithm="demo.noop", queue=queue)
    return [str(services.submit(owner=owner, spec=spec)[0].id) for _ in range(n)]


def test_each_backend_counts_on_counter_rows_of_its_own(alice):
    make_queue("c1", paused=True)  # nothing dispatched: the tasks stay where the test puts them
    ids = submit(alice, "c1", 3)
    with another_session() as other:
        other.execute("UPDATE jobs_task SET status = 'QUEUED' WHERE id = %s", [ids[0]])
        theirs = other.info.backend_pid
        rows = {(status, stripe): n for status, stripe, n in
                QueueCount.objects.filter(queue="c1").values_list("status", "stripe", "n")}
        assert rows == {("PENDING", my_pid()): 3, ("PENDING", theirs): -1, ("QUEUED", theirs): 1}
    assert queue_state("c1").counts == truth("c1") == {"PENDING": 2, "QUEUED": 1, "RUNNING": 0}


def test_the_rows_of_ended_backends_fold_into_stripe_0_and_every_count_stays_exact(alice):
    make_queue("c2", paused=True)
    ids = submit(alice, "c2", 4)
    other = another_session()
    gone = other.info.backend_pid
    other.execute("UPDATE jobs_task SET status = 'RUNNING' WHERE id = ANY(%s::uuid[])", [ids[:2]])
    other.execute("UPDATE jobs_task SET status = 'SUCCEEDED' WHERE id = %s", [ids[0]])
    other.close()
    wait_until(lambda: not _alive(gone), timeout=10, message="the other backend to end")
    before = (queue_state("c2").counts, minute_total("c2"))
    assert before == (truth("c2"), minute_truth("c2"))
    assert QueueCount.objects.filter(stripe=gone).exists() and TaskMinuteCount.objects.filter(stripe=gone).exists()

    assert counters.fold() >= 2
    assert not QueueCount.objects.filter(stripe=gone).exists()
    assert not TaskMinuteCount.objects.filter(stripe=gone).exists()
    assert QueueCount.objects.filter(queue="c2", stripe=my_pid()).exists()  # a live backend's rows stay
    assert (queue_state("c2").counts, minute_total("c2")) == before == (truth("c2"), minute_truth("c2"))
    assert queue_state("c2").counts == {"PENDING": 2, "QUEUED": 0, "RUNNING": 1}
    assert counters.fold() == 0  # nothing left to move


def test_a_fold_steps_around_a_locked_row_instead_of_waiting_and_moves_it_later(alice):
    make_queue("c3", paused=True)
    ids = submit(alice, "c3", 2)
    other = another_session()
    gone = other.info.backend_pid
    other.execute("UPDATE jobs_task SET status = 'QUEUED' WHERE id = %s", [ids[0]])
    other.close()
    wait_until(lambda: not _alive(gone), timeout=10, message="the other backend to end")
    holder = another_session()  # as a new backend given the ended one's pid would, writing its rows
    holder.execute("BEGIN")
    holder.execute("SELECT n FROM queueing_queuecount WHERE stripe = %s AND status = 'QUEUED' FOR UPDATE", [gone])
    try:
        with connection.cursor() as cur:
            cur.execute("SET lock_timeout = '5s'")  # waiting would fail the test instead of hanging it
        counters.fold()
        assert QueueCount.objects.filter(stripe=gone, status="QUEUED").exists()  # skipped, not waited for
        assert not QueueCount.objects.filter(stripe=gone, status="PENDING").exists()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        with connection.cursor() as cur:
            cur.execute("RESET lock_timeout")
    assert counters.fold() >= 1
    assert not QueueCount.objects.filter(stripe=gone).exists()
    assert queue_state("c3").counts == truth("c3") == {"PENDING": 1, "QUEUED": 1, "RUNNING": 0}


def _alive(pid: int) -> bool:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return cur.fetchone()[0] > 0


def test_minutes_older_than_the_longest_window_are_forgotten_and_the_statistics_stay_the_same(alice, olga, api):
    make_queue("c4", paused=True)
    submit(alice, "c4", 3)
    with connection.cursor() as cur:  # minutes no window reaches (32 days + a minute, and 2000); one it does
        for minute, n in (("2000-01-01T00:00:00Z", 7), (timezone.now() - timedelta(days=32, minutes=1), 5),
                          (timezone.now() - timedelta(days=30), 1)):
            cur.execute("INSERT INTO queueing_taskminutecount (minute, queue, algorithm, status, stripe, n) "
                        "VALUES (date_trunc('minute', %s::timestamptz), 'c4', 'demo.noop', 'SUCCEEDED', 0, %s)",
                        [minute, n])
    before = api(olga).get("/api/v1/statistics/tasks/?window=31d").json()

    assert counters.forget_old() == 2
    assert minute_total("c4") == {"PENDING": 3, "SUCCEEDED": 1}  # this window's rows stay
    after = api(olga).get("/api/v1/statistics/tasks/?window=31d").json()
    assert (after["by_status"], after["by_queue"]) == (before["by_status"], before["by_queue"])
    assert after["by_queue"]["c4"] == 4
    assert counters.forget_old() == 0
