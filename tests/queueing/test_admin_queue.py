"""The queue admin: a queue's name is its tasks' foreign key, so it is set once, when the queue is added."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from jobs.models import Task
from queueing.models import Queue
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(olga) -> Client:
    User.objects.filter(id=olga.id).update(is_staff=True)
    client = Client()
    client.force_login(User.objects.get(id=olga.id))
    return client


def change_form(queue: Queue, **fields: object) -> dict[str, object]:
    return {"name": queue.name, "concurrency": queue.concurrency, "default_priority": queue.default_priority,
            "description": queue.description, "user_concurrency": queue.user_concurrency,
            "resources": "{}", **fields}


def test_renaming_a_queue_with_tasks_in_the_admin_keeps_its_name_and_is_no_500(browser, alice):
    queue = make_queue("q1")
    Task.objects.create(owner=alice, algorithm="demo.noop", queue_id="q1")

    response = browser.post(f"/admin/queueing/queue/{queue.pk}/change/",
                            change_form(queue, name="renamed", description="still q1"))
    assert response.status_code == 302, response.content
    queue.refresh_from_db()
    assert queue.name == "q1" and queue.description == "still q1"
    assert Task.objects.get().queue_id == "q1"

    page = browser.get(f"/admin/queueing/queue/{queue.pk}/change/")
    assert page.status_code == 200
    assert 'name="name"' not in page.content.decode()  # shown, not editable
    assert '<div class="readonly">q1</div>' in page.content.decode()


def test_a_new_queue_gets_its_name_in_the_admin():
    browser = Client()
    browser.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    assert 'name="name"' in browser.get("/admin/queueing/queue/add/").content.decode()
    response = browser.post("/admin/queueing/queue/add/",
                            {"name": "fresh", "concurrency": 2, "default_priority": 5, "description": "",
                             "user_concurrency": 0, "resources": "{}"})
    assert response.status_code == 302, response.content
    assert Queue.objects.filter(name="fresh").exists()


@pytest.mark.parametrize("resources", ['["gpu"]', '"gpu"', '{"gpu": "x"}', '{"gpu": -1}', '{"gpu": true}',
                                       '{"gpu": 1.5}', '{"": 1}'])
def test_a_queues_resources_that_are_not_names_to_counts_are_refused_in_the_admin(browser, resources):
    # Before, the admin saved any JSON and every GET /api/v1/queues/ was a 500 from then on, for everyone.
    queue = make_queue("q1")

    response = browser.post(f"/admin/queueing/queue/{queue.pk}/change/", change_form(queue, resources=resources))

    assert response.status_code == 200  # the form again, with the error
    assert "resources" in response.context["adminform"].form.errors
    queue.refresh_from_db()
    assert queue.resources == {}
    assert browser.get("/api/v1/queues/").status_code == 200


def test_a_queues_resources_as_names_to_counts_are_saved_in_the_admin(browser):
    queue = make_queue("q1")

    response = browser.post(f"/admin/queueing/queue/{queue.pk}/change/", change_form(queue, resources='{"gpu": 2}'))

    assert response.status_code == 302, response.content
    queue.refresh_from_db()
    assert queue.resources == {"gpu": 2}
