"""A remote task whose Conveyor task ended while no worker's bridge watched it (cancelled while it
waited after a hold, timed out in the hold) is cancelled on its service by beat's sweep. The reference
gRPC service runs as a real process; no worker takes the task (its queue is not consumed)."""
from __future__ import annotations

import pytest

from algorithms.remote import client as c
from algorithms.remote import orphans
from algorithms.remote.models import RemoteRun
from jobs import services
from tests.conftest import unconsumed_queue, wait_until
from tests.remote.conftest import register

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


PARAMS = {"steps": 1000, "delay": 0.05}


def held_remote_task(grpc_service, owner):
    """What a bridge leaves when its service goes away mid-run and the task is held (back to PENDING):
    the remote task keeps running there, its id kept to re-attach to."""
    service, _ = register("ref-grpc", "grpc", grpc_service.address)
    queue = unconsumed_queue()
    task, _ = services.submit(owner=owner, spec=services.build_spec(algorithm="demo.hello_remote", params=PARAMS,
                                                                     queue=queue))
    remote_id, _ = c.client_for(service).submit(scheme="demo.hello_remote", params=PARAMS,
                                                client_task_id=str(task.id), attempt=1)
    RemoteRun.objects.create(task=task, service=service, remote_id=remote_id)
    return task


def test_a_remote_task_whose_task_was_cancelled_while_held_is_cancelled_on_its_service(grpc_service, alice):
    task = held_remote_task(grpc_service, alice)
    assert orphans.cancel_orphans() == 0  # still waiting to re-attach: left alone

    services.cancel(task_id=task.id)  # the user cancels it while it waits

    assert orphans.cancel_orphans() == 1
    assert [e["client_task_id"] for e in grpc_service.events("cancel_requested")] == [str(task.id)]
    wait_until(lambda: grpc_service.events("cancelled"), message="the service to stop the remote task")
    assert not RemoteRun.objects.filter(task=task).exists()
    assert orphans.cancel_orphans() == 0  # forgotten once cancelled


def test_a_service_that_does_not_answer_is_asked_again_next_time(grpc_service, alice):
    task = held_remote_task(grpc_service, alice)
    services.cancel(task_id=task.id)
    grpc_service.kill()

    assert orphans.cancel_orphans() == 0
    assert RemoteRun.objects.filter(task=task).exists()  # kept for the next sweep


def test_runs_on_a_dead_service_neither_starve_the_others_nor_stay_for_ever(grpc_service, alice, bob):
    """120 orphans on a dead service took every sweep's 100 places: a healthy service's were never asked, and
    the dead one's rows (and so their tasks, which retention keeps for them) stayed for ever."""
    from datetime import timedelta

    from django.utils import timezone

    from algorithms.remote.models import RemoteService
    from jobs.models import Task

    healthy = held_remote_task(grpc_service, alice)  # registers the service, and so its algorithm
    services.cancel(task_id=healthy.id)
    dead = RemoteService.objects.create(name="gone-svc", kind="grpc", address="127.0.0.1:1", enabled=True)
    stuck = []
    for n in range(3):
        task, _ = services.submit(owner=bob, spec=services.build_spec(
            algorithm="demo.hello_remote", params=PARAMS, queue=unconsumed_queue()))
        RemoteRun.objects.create(task=task, service=dead, remote_id=f"lost-{n}")
        services.cancel(task_id=task.id)
        stuck.append(task)
    RemoteRun.objects.filter(task__in=stuck).update(updated_at=timezone.now() - timedelta(hours=1))  # older

    assert orphans.cancel_orphans(limit=2) == 0  # two of the dead service's runs, tried first (oldest)
    assert orphans.cancel_orphans(limit=2) == 1  # the healthy one's turn came: the failed ones went back
    assert not RemoteRun.objects.filter(task=healthy).exists()

    Task.objects.filter(id__in=[t.id for t in stuck]).update(
        finished_at=timezone.now() - orphans.GIVE_UP_AFTER - timedelta(minutes=1))
    assert orphans.cancel_orphans() == 3  # given up on: forgotten
    assert not RemoteRun.objects.filter(task__in=stuck).exists()
