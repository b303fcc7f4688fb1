"""What a client submits is what the algorithm receives: params are stored as JSON (``Task.params``) and
validated again by the worker (``jobs.runner.run``), so a params model must read back what it writes.
An alias is stored as the client wrote it; a model that would hand the worker something else (a
``SecretStr`` stored as its mask, computed or excluded fields, a validation alias that is not written)
is refused when it is registered. Submits go through the REST API, runs through ``jobs.runner.run``."""
from __future__ import annotations

import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretBytes, SecretStr, computed_field, field_serializer

from algorithms import registry
from jobs import runner
from jobs.models import Status, Task
from tests.algorithms.test_artifact_ownership import claimed
from tests.conftest import unconsumed_queue

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def registered(monkeypatch):
    """``registered("t.name", Params)`` registers (through ``registry.algorithm``) an algorithm returning
    the params it received, for this test only."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))

    def add(name, params):
        registry.algorithm(name, params=params)(lambda ctx, p: {"received": p.model_dump(mode="json")})
        return name

    return add


class Aliased(BaseModel):
    model_config = ConfigDict(extra="forbid")
    learning_rate: float = Field(0.1, alias="learning-rate", gt=0)
    epochs: int = Field(3, alias="nEpochs")


def test_an_aliased_param_is_stored_as_submitted_and_reaches_the_algorithm(alice, api, registered):
    name = registered("t.aliased", Aliased)
    client = api(alice)

    response = client.post("/api/v1/tasks/", {"algorithm": name, "params": {"learning-rate": 0.5},
                                             "queue": unconsumed_queue()}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["params"] == {"learning-rate": 0.5, "nEpochs": 3}
    outcome = runner.run(claimed(response.json()["id"]))
    assert outcome.status == Status.SUCCEEDED, outcome.error
    assert outcome.result == {"received": {"learning_rate": 0.5, "epochs": 3}}


def test_a_field_name_where_the_model_wants_its_alias_is_400_naming_it(alice, api, registered):
    name = registered("t.aliased", Aliased)

    response = api(alice).post("/api/v1/tasks/", {"algorithm": name, "params": {"learning_rate": 0.5}},
                               format="json")

    assert response.status_code == 400, response.content
    assert "params.learning_rate" in response.json()["error"]["fields"]
    assert Task.objects.count() == 0


class Secret(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: SecretStr


class Credentials(BaseModel):
    token: SecretBytes = SecretBytes(b"")


class NestedSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = ""
    credentials: Credentials = Credentials()


class Computed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 1

    @computed_field
    @property
    def twice(self) -> int:
        return 2 * self.n


class Excluded(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(1, exclude=True)


class ReadOnlyAlias(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(1, validation_alias=AliasChoices("count", "n_items"))


@pytest.mark.parametrize(("model", "says"), [
    (Secret, "'api_key' is written as a mask"),
    (NestedSecret, "'token' is written as a mask"),
    (Computed, "twice"),
    (Excluded, "read as ['n'] but written as []"),
    (ReadOnlyAlias, "read as ['count'] but written as ['n']"),
])
def test_a_params_model_that_would_not_read_back_what_it_writes_is_refused_at_registration(alice, api, registered,
                                                                                           model, says):
    with pytest.raises(registry.InvalidAlgorithm) as refused:
        registered("t.lossy", model)

    message = str(refused.value)
    assert says in message and "'t.lossy'" in message
    assert "Secrets belong in the worker's environment or a mounted file" in message
    assert api(alice).get("/api/v1/algorithms/t.lossy/").status_code == 404


class Rounded(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: float = 0.0

    @field_serializer("x")
    def whole(self, value: float) -> int:
        return round(value)


def test_a_model_registration_could_not_see_through_is_a_400_at_submit_never_a_failed_run(alice, api, registered):
    """A custom serializer does not show in the JSON Schema: the stored params are validated again at
    submit, and params that would not come back the same are refused before anything is stored."""
    name = registered("t.rounded", Rounded)
    client = api(alice)

    response = client.post("/api/v1/tasks/", {"algorithm": name, "params": {"x": 0.4}}, format="json")

    assert response.status_code == 400, response.content
    assert "does not read back what it writes" in response.json()["error"]["fields"]["params"][0]
    assert Task.objects.count() == 0
    assert client.post("/api/v1/tasks/", {"algorithm": name, "params": {"x": 2.0}, "queue": unconsumed_queue()},
                       format="json").status_code == 201


def test_every_shipped_algorithm_reads_back_its_examples(alice, api):
    """The built-ins and the declared programs keep the rules (they are registered through them), and
    what an example stores validates again to the same params."""
    listed = api(alice).get("/api/v1/algorithms/").json()

    for item in listed:
        alg = registry.get(item["name"])
        for example in item["examples"]:
            stored = alg.validate(example)
            assert alg.params_model.model_validate(stored).model_dump() == alg.params_model.model_validate(
                example).model_dump(), item["name"]
