"""The reconciler re-sends a QUEUED task whose broker message was lost, and only then: a queue no worker
reads keeps its messages, and re-sending them on every pass grew its broker list by one message per task
per pass, for ever (a queue whose workers are scaled to 0 took about 1 KiB per task every 30 s)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from kombu import Connection

from jobs.models import Status, Task
from queueing import reconciler
from tests.conftest import wait_until
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "resend-noreader"  # no worker of the test session consumes it


@pytest.fixture
def broker() -> Iterator[Callable[[str], int]]:
    """Messages waiting in a broker queue, read by a connection of the test's own; emptied afterwards."""
    conn = Connection(settings.CELERY_BROKER_URL)

    def depth(name: str) -> int:
        try:
            with conn.channel() as channel:
                return channel.queue_declare(queue=name, passive=True).message_count
        except Exception:  # noqa: BLE001 - no such queue: nothing waits in it
            return 0

    yield depth
    with conn.channel() as channel:
        channel.queue_purge(QUEUE)
    conn.release()


def submit(client, queue: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "queue": queue}, format="json")
        assert response.status_code == 201, response.content
        ids.append(response.json()["id"])
    assert set(Task.objects.filter(id__in=ids).values_list("status", flat=True)) == {Status.QUEUED}
    return ids


def unclaimed_for_long(ids: list[str]) -> None:
    Task.objects.filter(id__in=ids).update(queued_at=timezone.now() - timedelta(hours=1))


def test_a_queue_no_worker_reads_keeps_one_message_a_task_however_many_passes(alice, api, broker):
    make_queue(QUEUE, concurrency=5)
    ids = submit(api(alice), QUEUE, 5)
    assert broker(QUEUE) == 5

    for _ in range(4):
        unclaimed_for_long(ids)
        assert reconciler.resend_lost_queued() == 0

    assert broker(QUEUE) == 5


def test_a_lost_message_is_sent_again(alice, api, broker):
    """Redis restarted with its data lost (here: the queue's messages purged): each QUEUED task gets one
    message again, and the next pass sends no more."""
    make_queue(QUEUE, concurrency=3)
    ids = submit(api(alice), QUEUE, 3)
    with Connection(settings.CELERY_BROKER_URL) as conn, conn.channel() as channel:
        channel.queue_purge(QUEUE)
    assert broker(QUEUE) == 0

    unclaimed_for_long(ids)
    reconciler.resend_lost_queued()  # or the session worker's reconciler (every second), whichever comes first
    wait_until(lambda: broker(QUEUE) == 3, timeout=10, message="the three lost messages sent again")

    unclaimed_for_long(ids)
    assert reconciler.resend_lost_queued() == 0
    assert broker(QUEUE) == 3
