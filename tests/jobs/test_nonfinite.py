"""NaN and infinities in what a worker writes (a diverging loss is ordinary in training): progress
metrics, the result (inline or stored) and a stored result's summary keep the value as the string
"NaN", "Infinity" or "-Infinity" (protobuf's JSON mapping), and the task succeeds on its first attempt,
instead of failing with a DataError or "Out of range float values are not JSON compliant" and running
again for nothing."""
from __future__ import annotations

import json

import pytest
from django.conf import settings

from algorithms import registry
from jobs import execution, runner, services
from jobs.jsonsafe import json_safe
from jobs.models import Status, Task, TaskEvent
from tests.algorithms.helpers import body, submit, wait_final
from tests.conftest import unconsumed_queue

pytestmark = pytest.mark.django_db(transaction=True)

NAN, INF = float("nan"), float("inf")
METRICS_SEEN = {"loss": "NaN", "grad_norm": "Infinity", "lr": 0.1, "history": [1.5, "-Infinity"]}


def run_once(owner, monkeypatch, fn, *, max_retries: int) -> Task:
    """Submit ``fn`` as an algorithm to a queue no worker consumes, claim it, run it (``runner.run``, what
    the worker runs), record its end; the task as it is then."""
    monkeypatch.setitem(registry._registry, "t.fn", registry.Algorithm(name="t.fn", fn=fn))
    task, _ = services.submit(owner=owner, spec=services.build_spec(algorithm="t.fn", queue=unconsumed_queue(),
                                                                     max_retries=max_retries))
    Task.objects.filter(id=task.id).update(status=Status.QUEUED)
    claimed = execution.claim(task_id=task.id, worker="w")
    execution.finish(task_id=task.id, outcome=runner.run(claimed), claimed_at=claimed.started_at)
    return Task.objects.get(id=task.id)


def progress_metrics(task_id) -> list:
    return [e.data["metrics"] for e in TaskEvent.objects.filter(task_id=task_id, event="task.progress").order_by("seq")]


def test_json_safe_writes_nonfinite_floats_as_strings_and_leaves_the_rest_as_it_is():
    value = {"a": [1.0, NAN, (INF, -INF)], NAN: "k", "b": {"c": "NaN", "d": 2}}
    assert json_safe(value) == {"a": [1.0, "NaN", ("Infinity", "-Infinity")], "NaN": "k",
                                  "b": {"c": "NaN", "d": 2}}
    clean = {"a": [1.0, 2, "x", None, True], "b": {"c": 0.5}}
    assert json_safe(clean) is clean  # nothing to change: not copied


def test_nan_in_python_progress_metrics_and_result_is_kept_and_the_task_succeeds_first_time(alice, api, monkeypatch):
    def diverges(ctx, params):
        ctx.progress(50, stage="train", message="epoch 5", metrics={"loss": NAN, "grad_norm": INF, "lr": 0.1,
                                                                     "history": [1.5, -INF]})
        return {"loss": NAN, "best": -INF, "accuracy": 0.5}

    task = run_once(alice, monkeypatch, diverges, max_retries=3)

    assert task.status == Status.SUCCEEDED and task.attempts == 1, task.error
    assert task.progress_metrics == METRICS_SEEN
    assert progress_metrics(task.id) == [METRICS_SEEN]  # the task.progress event (socket, webhooks) too
    assert not task.events.filter(event="task.retrying").exists()
    answer = api(alice).get(f"/api/v1/tasks/{task.id}/result/")
    assert answer.status_code == 200
    assert answer.json()["result"] == {"loss": "NaN", "best": "-Infinity", "accuracy": 0.5}


def test_nan_in_a_stored_result_and_its_summary_is_kept_and_the_task_succeeds(alice, api, monkeypatch):
    monkeypatch.setitem(settings.CONVEYOR, "RESULT_INLINE_MAX", 16)  # this result goes to storage

    def diverges(ctx, params):
        with ctx.open_artifact("curve.json", "w", content_type="application/json") as out:
            out.write("[1]")
        return {"losses": [0.5, 0.25, NAN, INF], "note": "diverged at epoch 3"}

    task = run_once(alice, monkeypatch, diverges, max_retries=3)

    assert task.status == Status.SUCCEEDED and task.attempts == 1, task.error
    client = api(alice)
    assert client.get(f"/api/v1/tasks/{task.id}/").json()["result_meta"]["summary"]["keys"] == ["losses", "note"]
    stored = client.get(f"/api/v1/tasks/{task.id}/result/")
    assert stored.status_code == 200
    assert json.loads(body(stored)) == {"losses": [0.5, 0.25, "NaN", "Infinity"], "note": "diverged at epoch 3"}

    def summarised(ctx, params):
        with ctx.open_result("w", content_type="text/plain", summary={"last_loss": NAN}) as out:
            out.write("big")

    task = run_once(alice, monkeypatch, summarised, max_retries=3)

    assert task.status == Status.SUCCEEDED and task.attempts == 1, task.error
    assert client.get(f"/api/v1/tasks/{task.id}/").json()["result_meta"]["summary"] == {"last_loss": "NaN"}


@pytest.mark.e2e
def test_nan_from_an_external_program_is_kept_and_the_task_succeeds_first_time(live_worker, alice, api):
    client = api(alice)

    done = wait_final(client, submit(client, "test.diverges", {"where": "inline"}, max_retries=3)["id"])

    assert done["status"] == "SUCCEEDED" and done["attempts"] == 1, done["error"]
    assert done["progress"]["metrics"] == METRICS_SEEN
    assert progress_metrics(done["id"]) == [METRICS_SEEN]
    assert client.get(f"/api/v1/tasks/{done['id']}/result/").json()["result"] == {
        "loss": "NaN", "best": "-Infinity", "accuracy": 0.5}

    done = wait_final(client, submit(client, "test.diverges", {"where": "file"}, max_retries=3)["id"])

    assert done["status"] == "SUCCEEDED" and done["attempts"] == 1, done["error"]
    assert done["result_meta"]["summary"] == {"last_loss": "NaN"}
    # the program's own file is stored byte for byte, as with any result file
    assert body(client.get(f"/api/v1/tasks/{done['id']}/result/")) == b"[1.5, NaN]\n"


@pytest.mark.parametrize(("result", "kept"), [
    ({"files": ["ok.txt", "caf\udce9.txt"], "caf\udce9.txt": 1, "caf\udce8.txt": 2, "x\ud800": 3},
     {"files": ["ok.txt", "caf\\xe9.txt"], "caf\\xe9.txt": 1, "caf\\xe8.txt": 2, "x\\ud800": 3}),
    ("caf\udce9 " * 100_000, "caf\\xe9 " * 100_000),  # past the inline limit: stored as a file
])
def test_a_lone_surrogate_in_a_result_is_kept_as_an_escape_and_the_task_succeeds(
        alice, api, monkeypatch, result, kept):
    # os.listdir of a file name that is not UTF-8: the task failed after its work was done, and ran again.
    task = run_once(alice, monkeypatch, lambda ctx, params: result, max_retries=3)

    assert task.status == Status.SUCCEEDED and task.attempts == 1, task.error
    answer = api(alice).get(f"/api/v1/tasks/{task.id}/result/")
    assert (answer.json()["result"] if isinstance(result, dict) else json.loads(body(answer))) == kept
