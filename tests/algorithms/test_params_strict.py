"""Every algorithm's params are taken as its published JSON Schema says: a ``number`` is a JSON number
(an integer is one), never ``true`` nor ``"5"``; an ``integer`` is a JSON integer, not ``"5"`` nor ``5.0``;
a string is a JSON string. A built-in's params were coerced (``{"seconds": true, "steps": "5"}`` was stored
as ``{"seconds": 1.0, "steps": 5}``); now they are a 400 naming each field, as a declared program's were.
What JSON can only write one way is still taken: an array for a tuple, a string for a ``Literal``."""
from __future__ import annotations

import pytest

from jobs.models import Task
from tests.conftest import unconsumed_queue

pytestmark = pytest.mark.django_db


def submit(client, algorithm, params, **extra):
    return client.post("/api/v1/tasks/", {"algorithm": algorithm, "params": params, **extra}, format="json")


def test_a_bool_for_a_number_and_a_string_for_an_integer_are_400_naming_both(alice, api):
    client = api(alice)

    response = submit(client, "demo.hello", {"seconds": True, "steps": "5"})

    assert response.status_code == 400, response.content
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"params.seconds", "params.steps"}, fields
    assert fields["params.seconds"] == ["Input should be a valid number"]
    assert fields["params.steps"] == ["Input should be a valid integer"]
    assert response.json()["error"]["message"].startswith("params.seconds: ")
    assert client.get("/api/v1/tasks/").json()["results"] == []
    assert Task.objects.count() == 0


@pytest.mark.parametrize(("algorithm", "params", "field", "says"), [
    ("demo.hello", {"seconds": "2"}, "params.seconds", "valid number"),
    ("demo.hello", {"steps": 5.0}, "params.steps", "valid integer"),
    ("demo.hello", {"steps": True}, "params.steps", "valid integer"),
    ("demo.sleep", {"ignore_cancel": "yes"}, "params.ignore_cancel", "valid boolean"),
    ("demo.sleep", {"ignore_cancel": 1}, "params.ignore_cancel", "valid boolean"),
    ("demo.blob", {"seed": "1"}, "params.seed", "valid integer"),
    ("grid.power_flow", {"case": "14"}, "params.case", "Input should be"),
    ("ml.train_classifier", {"hidden_layer_sizes": ["64"]}, "params.hidden_layer_sizes.0", "valid integer"),
    ("optimize.minimize", {"function": "sphere", "x0": ["1", 2]}, "params.x0.0", "valid number"),
])
def test_a_built_ins_param_of_another_json_type_is_400_naming_it(alice, api, algorithm, params, field, says):
    response = submit(api(alice), algorithm, params)

    assert response.status_code == 400, response.content
    fields = response.json()["error"]["fields"]
    assert field in fields, fields
    assert says in fields[field][0], fields
    assert Task.objects.count() == 0


@pytest.mark.parametrize(("algorithm", "params", "stored"), [
    ("demo.hello", {"seconds": 2, "steps": 5}, {"seconds": 2.0, "steps": 5}),  # an integer is a number
    ("demo.sleep", {"seconds": 0.5, "ignore_cancel": True}, {"seconds": 0.5, "ignore_cancel": True}),
    ("grid.power_flow", {"case": 9, "flat_start": True}, {"case": 9, "flat_start": True}),
    ("ml.train_classifier", {"dataset": "wine", "hidden_layer_sizes": [8, 4]}, {"dataset": "wine",
                                                                                "hidden_layer_sizes": [8, 4]}),
    ("optimize.minimize", {"linear_program": {"c": [1, 2], "bounds": [[0, None]]}},
     {"linear_program": {"c": [1.0, 2.0], "bounds": [[0.0, None]]}}),  # a tuple is written as an array
])
def test_params_of_the_json_types_the_schema_names_are_taken(alice, api, algorithm, params, stored):
    response = submit(api(alice), algorithm, params, queue=unconsumed_queue())

    assert response.status_code == 201, response.content
    assert within(response.json()["params"], stored), response.json()["params"]


def within(kept, expected):
    """``expected``'s keys have its values in ``kept`` (which also has the defaults filled in)."""
    if isinstance(expected, dict):
        return isinstance(kept, dict) and all(k in kept and within(kept[k], v) for k, v in expected.items())
    return kept == expected and type(kept) is type(expected)
