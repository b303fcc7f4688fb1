"""NumPy values in what a worker writes (what scikit-learn and NumPy code naturally returns): progress
metrics, the result (inline or stored) and a summary keep them as the Python numbers and lists they hold,
and the task succeeds on its first attempt, instead of failing after its work with "TypeError: Object of
type int64 is not JSON serializable" and running again for nothing. A value with no faithful JSON form
(a set, a Decimal, a model object) fails the task at once, without retries, naming where it is and its
type. Tasks run through ``jobs.runner.run`` (what the worker runs) on claimed tasks."""
from __future__ import annotations

import datetime
import decimal
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
from django.conf import settings

from jobs.jsonsafe import NotJsonSerialisable, json_safe
from jobs.models import Status, TaskEvent
from tests.algorithms.helpers import body
from tests.conftest import ROOT
from tests.jobs.test_nonfinite import progress_metrics, run_once

pytestmark = pytest.mark.django_db(transaction=True)


class Booster:
    """Stands for a trained model returned by mistake."""


def test_json_safe_writes_numpy_scalars_and_arrays_as_python_values():
    value = {"n": np.int64(2), "acc": np.float32(0.75), "ok": np.bool_(True), "nan": np.float64("nan"),
             "m": np.array([[1, 2], [3, 4]]), "curve": np.array([0.5, np.inf]), np.int64(7): "seven",
             "nested": [(np.uint8(1), np.longdouble(1.5))], "zero_d": np.array(3.0)}

    cleaned = json_safe(value)

    assert cleaned == {"n": 2, "acc": 0.75, "ok": True, "nan": "NaN", "m": [[1, 2], [3, 4]],
                       "curve": [0.5, "Infinity"], 7: "seven", "nested": [(1, 1.5)], "zero_d": 3.0}
    for item in (cleaned["n"], cleaned["acc"], cleaned["ok"], cleaned["m"][0][0], cleaned["nested"][0][1]):
        assert type(item) in (int, float, bool)
    assert type(next(k for k in cleaned if k == 7)) is int
    json.dumps(cleaned, allow_nan=False)  # what was refused before
    clean = {"a": [1.0, 2, "x", None, True], "b": {"c": 0.5}}
    assert json_safe(clean) is clean  # nothing to change: not copied


def test_json_safe_writes_datetimes_and_uuids_as_the_api_writes_its_own():
    at = datetime.datetime(2026, 12, 1, 13, 4, 5, 6, tzinfo=datetime.timezone.utc)
    assert json_safe({"at": at, "day": at.date(), "id": uuid.UUID(int=1)}) == {
        "at": "2026-12-01T13:04:05.000006+00:00", "day": "2026-12-01", "id": "00000000-0000-0000-0000-000000000001"}


@pytest.mark.parametrize(("value", "message"), [
    ({"model": Booster()}, "result['model']: object of type Booster is not JSON-serialisable"),
    ({"a": [1, {"classes": {"x", "y"}}]}, "result['a'][1]['classes']: object of type set is not JSON-serialisable"),
    ({"total": decimal.Decimal("1.10")}, "result['total']: object of type Decimal is not JSON-serialisable"),
    ({"raw": b"\x00\x01"}, "result['raw']: object of type bytes is not JSON-serialisable"),
    ({"z": np.array([1j])}, "result['z'][0]: object of type complex is not JSON-serialisable"),
    ({"t": np.datetime64("2026-12-01T00:00:00.000000001")},
     "result['t']: object of type datetime64 is not JSON-serialisable"),
    ({(1, 2): "pair"}, "result[(1, 2)]: key of type tuple is not JSON-serialisable"),
])
def test_json_safe_refuses_a_value_with_no_faithful_json_form_naming_its_path_and_type(value, message):
    with pytest.raises(NotJsonSerialisable) as refused:
        json_safe(value, "result")

    assert str(refused.value).startswith(message)
    assert refused.value.retryable is False  # the runner fails the task at once
    assert isinstance(refused.value, TypeError)


def test_json_safe_does_not_import_numpy():
    code = ("import sys; from jobs.jsonsafe import json_safe; "
            "assert json_safe({'a': [1.5, float('nan')]}) == {'a': [1.5, 'NaN']}; "
            "assert 'numpy' not in sys.modules, 'numpy imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_numpy_values_in_python_progress_metrics_and_result_are_kept_and_the_task_succeeds_first_time(
        alice, api, monkeypatch):
    def trains(ctx, params):
        y = np.array([0, 1, 1])
        ctx.progress(50, stage="train", metrics={"epoch": np.int64(1), "loss": np.float32(0.5),
                                                 "per_class": np.array([0.25, np.nan])})
        return {"n_correct": (y == 1).sum(), "accuracy": np.float32(0.75), "confusion": np.eye(2, dtype=int)}

    task = run_once(alice, monkeypatch, trains, max_retries=3)

    assert task.status == Status.SUCCEEDED and task.attempts == 1, task.error
    seen = {"epoch": 1, "loss": 0.5, "per_class": [0.25, "NaN"]}
    assert task.progress_metrics == seen
    assert progress_metrics(task.id) == [seen]  # the task.progress event (socket, webhooks) too
    assert not task.events.filter(event="task.retrying").exists()
    answer = api(alice).get(f"/api/v1/tasks/{task.id}/result/")
    assert answer.json()["result"] == {"n_correct": 2, "accuracy": 0.75, "confusion": [[1, 0], [0, 1]]}


def test_numpy_values_in_a_stored_result_and_a_summary_are_kept(alice, api, monkeypatch):
    monkeypatch.setitem(settings.CONVEYOR, "RESULT_INLINE_MAX", 16)  # this result goes to storage
    client = api(alice)

    task = run_once(alice, monkeypatch, lambda ctx, params: {"weights": np.arange(6.0).reshape(2, 3)},
                    max_retries=3)

    assert task.status == Status.SUCCEEDED and task.attempts == 1, task.error
    assert json.loads(body(client.get(f"/api/v1/tasks/{task.id}/result/"))) == {
        "weights": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]}

    def summarised(ctx, params):
        with ctx.open_result("w", content_type="text/plain", summary={"rows": np.int64(1000)}) as out:
            out.write("big")

    task = run_once(alice, monkeypatch, summarised, max_retries=3)

    assert task.status == Status.SUCCEEDED and task.attempts == 1, task.error
    assert client.get(f"/api/v1/tasks/{task.id}/").json()["result_meta"]["summary"] == {"rows": 1000}


def failed_at_once(task, message):
    assert task.status == Status.FAILED, task.error
    assert task.attempts == 1
    assert not task.events.filter(event="task.retrying").exists()
    assert message in task.error


def test_an_object_json_cannot_hold_in_the_result_fails_the_task_at_once_naming_it(alice, monkeypatch):
    task = run_once(alice, monkeypatch, lambda ctx, params: {"accuracy": np.float64(0.9), "model": Booster()},
                    max_retries=3)

    failed_at_once(task, "result['model']: object of type Booster is not JSON-serialisable")


def test_a_set_in_progress_metrics_fails_the_task_at_once_naming_it(alice, monkeypatch):
    def reports(ctx, params):
        ctx.progress(10, stage="train", metrics={"epoch": np.int64(1), "classes": {"cat", "dog"}})
        return {"ok": True}

    task = run_once(alice, monkeypatch, reports, max_retries=3)

    failed_at_once(task, "metrics['classes']: object of type set is not JSON-serialisable")
    assert not TaskEvent.objects.filter(task_id=task.id, event="task.progress").exists()


def test_a_decimal_in_a_summary_fails_the_task_at_once_naming_it(alice, monkeypatch):
    def summarised(ctx, params):
        with ctx.open_result("w", content_type="text/plain", summary={"total": decimal.Decimal("9.99")}) as out:
            out.write("big")

    task = run_once(alice, monkeypatch, summarised, max_retries=3)

    failed_at_once(task, "summary['total']: object of type Decimal is not JSON-serialisable")
