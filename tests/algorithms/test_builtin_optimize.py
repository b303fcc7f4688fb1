"""optimize.minimize through the real worker: known minima are found, LPs are solved exactly, bad
problems are a 400 at submit."""
from __future__ import annotations

import pytest

from tests.algorithms.helpers import run

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def result_of(client, task) -> dict:
    return client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]


def test_rosenbrock_in_five_dimensions_reaches_all_ones_with_progress_per_iteration(live_worker, alice, api):
    client = api(alice)

    task = run(client, "optimize.minimize", {"function": "rosenbrock", "dimensions": 5, "method": "L-BFGS-B"})

    result = result_of(client, task)
    assert result["success"] is True
    assert result["x"] == pytest.approx([1.0] * 5, abs=1e-3)
    assert result["fun"] < 1e-6
    assert result["history"][-1] < result["history"][0]
    assert len(result["history"]) == result["iterations"]
    assert task["progress"]["metrics"]["fun"] == result["fun"]


def test_rastrigin_global_minimum_is_found_by_differential_evolution(live_worker, alice, api):
    client = api(alice)

    task = run(client, "optimize.minimize",
               {"function": "rastrigin", "dimensions": 3, "method": "differential_evolution", "seed": 1})

    result = result_of(client, task)
    assert result["fun"] == pytest.approx(0.0, abs=1e-6)
    assert result["distance_to_known_minimum"] < 1e-3


def test_linear_program_is_solved(live_worker, alice, api):
    client = api(alice)
    # maximise x + 2y subject to x + y <= 4, x - y <= 2, x, y >= 0  →  (0, 4), objective 8
    lp = {"c": [-1, -2], "A_ub": [[1, 1], [1, -1]], "b_ub": [4, 2]}

    task = run(client, "optimize.minimize", {"linear_program": lp})

    result = result_of(client, task)
    assert result["success"] is True
    assert result["x"] == pytest.approx([0.0, 4.0]) and result["fun"] == pytest.approx(-8.0)


@pytest.mark.parametrize(("params", "field"), [
    ({"function": "rosenbrock", "linear_program": {"c": [1]}}, "params"),
    ({"function": "rosenbrock", "dimensions": 3, "x0": [0, 0]}, "params"),
    ({"linear_program": {"c": [1, 2], "A_ub": [[1]], "b_ub": [1]}}, "params.linear_program"),
    ({"function": "booth"}, "params.function"),
    ({"function": "sphere", "method": "simplex"}, "params.method"),
])
def test_ill_posed_problems_are_rejected_at_submit(alice, api, params, field):
    response = api(alice).post("/api/v1/tasks/", {"algorithm": "optimize.minimize", "params": params}, format="json")
    assert response.status_code == 400, response.content
    assert any(name.startswith(field) for name in response.json()["error"]["fields"]), response.json()
