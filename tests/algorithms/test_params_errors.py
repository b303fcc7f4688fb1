"""A bad param is a 400 naming it (``params.x``), whatever kind of algorithm it is for: a number that is
NaN or infinite (JSON and the database have none), a declared program's integer given as ``7.0`` or
``"7"``, a remote scheme's missing or unexpected property."""
from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from algorithms import registry
from jobs.models import Task

pytestmark = pytest.mark.django_db


class Floats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: float = 1.0
    xs: list[float] = []
    by_name: dict[str, float] = {}


@pytest.fixture
def floats(monkeypatch):
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    registry.algorithm("t.floats", params=Floats)(lambda ctx, p: None)
    return "t.floats"


def submit(client, algorithm, params):
    return client.post("/api/v1/tasks/", {"algorithm": algorithm, "params": params}, format="json")


@pytest.mark.parametrize(("params", "field"), [
    ({"x": "nan"}, "params.x"),
    ({"x": "Infinity"}, "params.x"),
    ({"x": "-inf"}, "params.x"),
    ({"xs": [1, "NaN"]}, "params.xs.1"),
    ({"by_name": {"loss": "inf"}}, "params.by_name.loss"),
])
def test_a_non_finite_number_is_400_naming_the_field(alice, api, floats, params, field):
    response = submit(api(alice), floats, params)

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert field in error["fields"], error
    assert "finite" in error["fields"][field][0]
    assert Task.objects.count() == 0


@pytest.mark.parametrize("value", ["nan", "Infinity"])
def test_a_non_finite_number_for_a_bounded_param_is_400_saying_so(alice, api, value):
    # demo.hello's seconds is at most 3600: "nan" was refused as "less than or equal to 3600"
    response = submit(api(alice), "demo.hello", {"seconds": value})

    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]["params.seconds"] == [registry.NONFINITE]


def test_other_errors_of_a_value_that_reads_as_nan_keep_their_own_message(alice, api, floats):
    # "nan" under a name the params do not have: the error is the unknown name, not a number's finiteness
    response = submit(api(alice), floats, {"unknown": "nan"})

    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]["params.unknown"] == ["Extra inputs are not permitted"]


@pytest.mark.parametrize(("algorithm", "params", "field"), [
    ("external.py_stats", {"values": [1, "nan"]}, "params.values.1"),
    ("external.py_stats", {"values": [1, "Infinity"]}, "params.values.1"),
    ("external.py_stats", {"values": [1, "2"]}, "params.values.1"),
    ("external.sh_countdown", {"count": "7"}, "params.count"),
    ("external.sh_countdown", {"count": 7.0}, "params.count"),
    ("external.sh_countdown", {"count": True}, "params.count"),
    ("test.echo_params", {"word": 5}, "params.word"),
    ("test.echo_params", {"word": "w", "n": 2.5}, "params.n"),
])
def test_a_declared_programs_params_are_taken_as_their_json_schema_says(alice, api, algorithm, params, field):
    response = submit(api(alice), algorithm, params)

    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"], response.json()
    assert Task.objects.count() == 0


def test_a_declared_programs_valid_params_are_stored_as_json_numbers(alice, api):
    client = api(alice)

    assert submit(client, "external.sh_countdown", {"count": 7}).json()["params"] == {"count": 7}
    assert submit(client, "external.py_stats", {"values": [1, 2.5]}).json()["params"]["values"] == [1.0, 2.5]


SCHEMES = [
    {"name": "t.remote", "version": "1", "description": "a cached scheme", "params_schema": {
        "type": "object", "additionalProperties": False, "required": ["size", "name"],
        "properties": {"size": {"type": "integer"}, "name": {"type": "string"},
                       "inner": {"type": "object", "required": ["depth"], "additionalProperties": False,
                                 "properties": {"depth": {"type": "integer"}}}}}},
]


@pytest.fixture
def remote():
    from algorithms.remote.models import RemoteService

    RemoteService.objects.create(name="ref-cache", kind="grpc", address="127.0.0.1:9", schemes=SCHEMES)
    return "t.remote"


@pytest.mark.parametrize(("params", "fields"), [
    ({}, {"params.size", "params.name"}),
    ({"size": 1}, {"params.name"}),
    ({"size": 1, "name": "a", "nmae": "b", "colour": 1}, {"params.nmae", "params.colour"}),
    ({"size": 1, "name": "a", "inner": {"deep": 1}}, {"params.inner.depth", "params.inner.deep"}),
    ({"size": "x", "name": "a"}, {"params.size"}),
])
def test_a_remote_schemes_missing_or_unexpected_property_is_400_naming_it(alice, api, remote, params, fields):
    response = submit(api(alice), remote, params)

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert set(error["fields"]) == fields, error
    assert error["message"].split(":")[0] in fields
    assert Task.objects.count() == 0


def test_a_json_blob_too_big_to_build_in_memory_is_400_naming_its_size(alice, api):
    # demo.blob builds a json result whole in the worker's memory: 16 GiB of it was accepted (~70 GiB there)
    client = api(alice)
    response = submit(client, "demo.blob", {"size_mb": 1024, "format": "json"})
    assert response.status_code == 400, response.content
    assert "format json" in response.json()["error"]["fields"]["params.size_mb"][0]
    assert Task.objects.count() == 0
    assert submit(client, "demo.blob", {"size_mb": 1024}).status_code == 201  # binary streams any size
    assert submit(client, "demo.blob", {"size_mb": 64, "format": "json"}).status_code == 201
