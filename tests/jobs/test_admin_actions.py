"""The task admin's actions go through the same services as the API: cancel and retry are the bulk ones."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from jobs.models import Status, Task
from tests.conftest import queued_tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_cancelling_selected_tasks_in_the_admin_cancels_the_waiting_and_counts_the_finished(alice):
    waiting = queued_tasks(alice, 3)
    done = queued_tasks(alice, 1)[0]
    Task.objects.filter(id=done.id).update(status=Status.SUCCEEDED)
    untouched = queued_tasks(alice, 1)[0]
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))

    response = admin.post("/admin/jobs/task/", {"action": "cancel", "_selected_action": [
        str(t.id) for t in [*waiting, done]]}, follow=True)

    assert response.status_code == 200
    assert [str(m) for m in response.context["messages"]] == [
        "cancelled 3 task(s), cancelling 0 (running: their workers stop them), already final 1"]
    assert set(Task.objects.filter(id__in=[t.id for t in waiting]).values_list("status", flat=True)) == {Status.CANCELLED}
    assert Task.objects.get(id=done.id).status == Status.SUCCEEDED
    assert Task.objects.get(id=untouched.id).status == Status.QUEUED


def test_retrying_selected_tasks_in_the_admin_is_the_bulk_retry_a_double_click_makes_nothing_twice(alice):
    failed = queued_tasks(alice, 2)
    Task.objects.filter(id__in=[t.id for t in failed]).update(status=Status.FAILED)
    waiting = queued_tasks(alice, 1)[0]
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    selected = {"action": "retry", "_selected_action": [str(t.id) for t in [*failed, waiting]]}

    first = admin.post("/admin/jobs/task/", selected, follow=True)
    again = admin.post("/admin/jobs/task/", selected, follow=True)

    assert [str(m) for m in first.context["messages"]] == [
        "retried 2 task(s); 0 had a retry already (not retried again); 1 not finished (left alone)"]
    assert [str(m) for m in again.context["messages"]] == [
        "retried 0 task(s); 2 had a retry already (not retried again); 1 not finished (left alone)"]
    retries = Task.objects.filter(retry_of__in=failed)
    assert sorted(str(t.retry_of_id) for t in retries) == sorted(str(t.id) for t in failed)
    assert Task.objects.get(id=waiting.id).status == Status.QUEUED


@pytest.mark.parametrize("query", ["status__exact=%00", "q=a%00b", "o=1%00", "%00=1"])
def test_a_nul_in_an_admin_lists_query_is_a_400_naming_the_parameter(query):
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))

    response = admin.get(f"/admin/jobs/task/?{query}")

    assert response.status_code == 400
    assert "must not contain NUL characters" in response.json()["error"]["message"]
