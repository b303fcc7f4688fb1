"""A batch that cannot be stored names every failing item in one 400, what the serializer checks (a
priority, a label) and what the services check (the algorithm, params against its schema, the queue)
alike, so a client fixes the batch in one round trip; nothing is stored."""
from __future__ import annotations

import pytest

from jobs.api.serializers import BATCH_ERRORS_MAX
from jobs.models import Task

pytestmark = pytest.mark.django_db


def refused(response) -> dict:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["message"]
    assert Task.objects.count() == 0
    return error


def test_every_bad_item_of_a_batch_is_named_whether_the_serializer_or_the_services_refuse_it(alice, api):
    tasks = [{"algorithm": "demo.noop"} for _ in range(500)]
    tasks[3] = {"algorithm": "demo.hello", "params": {"seconds": "abc"}}  # services: params schema
    tasks[77] = {"algorithm": "demo.noop", "priority": 42}  # serializer
    tasks[200] = {"algorithm": "demo.noop", "labels": ["x" * 101]}  # serializer
    tasks[400] = {"algorithm": "no.such"}  # services: registry
    tasks[450] = {"algorithm": "demo.noop", "queue": "nope"}  # services: queue
    tasks[460] = {"algorithm": "demo.hello", "params": {"seconds": -1}}
    tasks[470] = "not an object"

    error = refused(api(alice).post("/api/v1/tasks/batch/", {"tasks": tasks}, format="json"))

    assert set(error["fields"]) == {"tasks[3].params.seconds", "tasks[77].priority", "tasks[200].labels[0]",
                                    "tasks[400].algorithm", "tasks[450].queue", "tasks[460].params.seconds",
                                    "tasks[470]"}, error["fields"]
    assert error["message"].startswith("tasks[3].params.seconds: ")
    assert "unknown queue 'nope'" in error["fields"]["tasks[450].queue"][0]


def test_a_batch_with_only_service_level_errors_names_each_item(alice, api):
    tasks = [{"algorithm": "demo.noop"} for _ in range(500)]
    tasks[400] = {"algorithm": "no.such"}
    tasks[450] = {"algorithm": "demo.noop", "queue": "nope"}
    tasks[460] = {"algorithm": "demo.hello", "params": {"seconds": -1}}

    error = refused(api(alice).post("/api/v1/tasks/batch/", {"tasks": tasks}, format="json"))

    assert set(error["fields"]) == {"tasks[400].algorithm", "tasks[450].queue", "tasks[460].params.seconds"}
    assert error["message"].startswith("tasks[400].algorithm: ")


def test_more_bad_items_than_the_cap_name_the_first_ones_and_count_them_all(alice, api):
    tasks = [{"algorithm": "no.such"} for _ in range(BATCH_ERRORS_MAX + 50)] + [{"algorithm": "demo.noop"}]

    error = refused(api(alice).post("/api/v1/tasks/batch/", {"tasks": tasks}, format="json"))

    named = [f for f in error["fields"] if f != "tasks"]
    assert named == [f"tasks[{i}].algorithm" for i in range(BATCH_ERRORS_MAX)]
    assert error["fields"]["tasks"] == [f"{BATCH_ERRORS_MAX + 50} tasks are invalid; "
                                        f"the first {BATCH_ERRORS_MAX} are named here"]


def test_a_batch_over_the_limit_is_refused_before_its_items_are_read(alice, api, settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "BATCH_MAX": 3}

    error = refused(api(alice).post("/api/v1/tasks/batch/", {"tasks": [{"algorithm": "no.such"}] * 4}, format="json"))

    assert error["fields"] == {"tasks": ["at most 3 tasks per batch"]}
    assert api(alice).post("/api/v1/tasks/batch/", {"tasks": [{"algorithm": "demo.noop"}] * 3},
                           format="json").status_code == 201


@pytest.mark.parametrize("body", [{"tasks": []}, {"tasks": "x"}, {}, [{"algorithm": "demo.noop"}]])
def test_a_batch_body_of_the_wrong_shape_is_400_naming_tasks(alice, api, body):
    error = refused(api(alice).post("/api/v1/tasks/batch/", body, format="json"))
    assert "tasks" in error["fields"] or "non_field_errors" in error["fields"], error


def test_a_good_batch_stores_every_item_as_the_services_built_it(alice, api):
    tasks = [{"algorithm": "demo.noop", "priority": "high"} for _ in range(50)]

    response = api(alice).post("/api/v1/tasks/batch/", {"tasks": tasks}, format="json")

    assert response.status_code == 201, response.content
    assert [t["priority"] for t in response.json()["tasks"]] == [8] * 50
    assert Task.objects.count() == 50
