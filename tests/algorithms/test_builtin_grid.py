"""grid.power_flow through the real worker: the IEEE 14-bus case converges to the published voltages,
bus numbers are the published 1-based ones, progress reports the mismatch per Newton iteration."""
from __future__ import annotations

import pytest

from jobs.models import TaskEvent
from tests.algorithms.helpers import run

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# IEEE 14-bus test case, published solution (vm in pu, va in degrees).
PUBLISHED_14 = {
    1: (1.060, 0.00), 2: (1.045, -4.98), 3: (1.010, -12.72), 4: (1.018, -10.33), 5: (1.020, -8.78),
    6: (1.070, -14.22), 7: (1.062, -13.37), 8: (1.090, -13.36), 9: (1.056, -14.94), 10: (1.051, -15.10),
    11: (1.057, -14.79), 12: (1.055, -15.07), 13: (1.050, -15.16), 14: (1.036, -16.04),
}


def test_ieee14_from_a_flat_start_converges_to_the_published_solution(live_worker, alice, api):
    client = api(alice)

    task = run(client, "grid.power_flow", {"case": 14, "flat_start": True})

    result = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]
    assert result["converged"] is True and 3 <= result["iterations"] <= 6
    buses = {b["bus"]: b for b in result["buses"]}
    assert sorted(buses) == list(range(1, 15))
    for number, (vm, va) in PUBLISHED_14.items():
        assert buses[number]["vm_pu"] == pytest.approx(vm, abs=1.5e-3), number
        assert buses[number]["va_degree"] == pytest.approx(va, abs=0.03), number
    assert buses[1]["vm_pu"] == pytest.approx(1.06, abs=1e-9)
    assert buses[1]["p_mw"] == pytest.approx(232.4, abs=0.1)  # the slack covers load 259 MW - 40 MW at bus 2 + losses
    assert result["losses_mw"] == pytest.approx(13.393, abs=0.01)
    assert len(result["lines"]) == 20
    first = result["lines"][0]
    assert (first["from_bus"], first["to_bus"]) == (1, 2)
    assert first["p_from_mw"] == pytest.approx(156.88, abs=0.05)
    assert sum(line["loss_mw"] for line in result["lines"]) == pytest.approx(result["losses_mw"], abs=1e-4)

    lines = [e["data"]["line"] for e in client.get(f"/api/v1/tasks/{task['id']}/logs/").json()
             if e["event"] == "task.log" and e["data"]["line"].startswith("iteration ")]
    assert [int(line.split()[1].rstrip(":")) for line in lines] == list(range(result["iterations"] + 1))
    mismatches = [float(line.split()[3]) for line in lines]
    assert all(b < a for a, b in zip(mismatches, mismatches[1:]))  # Newton: the mismatch falls every step
    progress = [e.data["metrics"] for e in TaskEvent.objects.filter(task_id=task["id"], event="task.progress")
                .order_by("seq") if e.data.get("stage") == "newton"]
    assert progress[-1]["iteration"] == result["iterations"]  # coalesced, but the last one is always kept
    assert mismatches[-1] < 1e-8 and progress[-1]["mismatch_pu"] < 1e-8


@pytest.mark.parametrize(("case", "lines"), [(30, 41), (57, 80), (118, 186)])
def test_larger_ieee_cases_converge_with_published_bus_numbers(live_worker, alice, api, case, lines):
    client = api(alice)

    task = run(client, "grid.power_flow", {"case": case})

    result = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]
    assert result["converged"] is True
    assert [b["bus"] for b in result["buses"]] == list(range(1, case + 1))
    assert len(result["lines"]) == lines
    assert result["losses_mw"] > 0
    assert task["progress"]["metrics"]["mismatch_pu"] < 1e-8


def test_overloaded_case_reports_non_convergence_instead_of_failing(live_worker, alice, api):
    client = api(alice)

    task = run(client, "grid.power_flow", {"case": 14, "load_scale": 5, "max_iterations": 5})

    result = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]
    assert result["converged"] is False and result["iterations"] == 5
