"""ml.train_classifier through the real worker: sensible accuracies, progress with metrics as they
come, the model saved as a loadable artifact."""
from __future__ import annotations

import io

import joblib
import pytest
from sklearn.datasets import load_iris

from tests.algorithms.helpers import body, run, submit, wait_final
from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def progress_events(client, task_id: str) -> list[dict]:
    # /logs/ leaves progress out; the task's own event stream (WebSocket replay) keeps it in the DB.
    from jobs.models import TaskEvent

    return [e.data for e in TaskEvent.objects.filter(task_id=task_id, event="task.progress").order_by("seq")]


def test_logistic_regression_on_iris_is_accurate_and_saves_a_loadable_model(live_worker, alice, api):
    client = api(alice)

    task = run(client, "ml.train_classifier", {"dataset": "iris", "model": "logistic_regression", "cv_folds": 3})

    result = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]
    metrics = result["metrics"]
    assert result["classes"] == ["setosa", "versicolor", "virginica"]
    assert result["n_train"] + result["n_test"] == 150
    assert metrics["accuracy"] >= 0.9 and metrics["f1_macro"] >= 0.9
    assert metrics["cv_accuracy_mean"] >= 0.9 and len(metrics["cv_accuracy"]) == 3
    matrix = metrics["confusion_matrix"]
    assert len(matrix) == 3 and sum(map(sum, matrix)) == result["n_test"]
    assert sum(matrix[i][i] for i in range(3)) / result["n_test"] == pytest.approx(metrics["accuracy"], abs=1e-3)

    folds = [e for e in progress_events(client, task["id"]) if e.get("stage") == "cross_validate"]
    fold_numbers = [e["metrics"]["fold"] for e in folds]
    # progress is coalesced under load, but a stage's first and last report are always kept, in order
    assert fold_numbers[0] == 1 and fold_numbers[-1] == 3 and fold_numbers == sorted(set(fold_numbers))
    assert all(0.8 <= e["metrics"]["accuracy"] <= 1 for e in folds)

    artifacts = client.get(f"/api/v1/tasks/{task['id']}/artifacts/").json()
    assert [a["name"] for a in artifacts] == ["model.joblib"]
    model = joblib.load(io.BytesIO(body(client.get(artifacts[0]["url"]))))
    X, y = load_iris(return_X_y=True)
    assert (model.predict(X) == y).mean() >= 0.9


def test_mlp_reports_loss_and_accuracy_per_epoch(live_worker, alice, api):
    client = api(alice)

    task = run(client, "ml.train_classifier",
               {"dataset": "breast_cancer", "model": "mlp", "epochs": 15, "cv_folds": 0, "hidden_layer_sizes": [16],
                "learning_rate": 0.01})

    epochs = [e["metrics"] for e in progress_events(client, task["id"]) if e.get("stage") == "train"]
    numbers = [e["epoch"] for e in epochs]
    # coalesced to at most one write per interval, but the stage's first and last epochs are always kept
    assert numbers[0] == 1 and numbers[-1] == 15 and numbers == sorted(set(numbers))
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert {"loss", "accuracy", "val_accuracy"} <= set(epochs[-1])
    metrics = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]["metrics"]
    assert metrics["accuracy"] >= 0.9 and len(metrics["confusion_matrix"]) == 2


@pytest.mark.parametrize(("dataset", "model", "extra", "floor"), [
    ("wine", "random_forest", {"n_estimators": 30}, 0.9),
    ("breast_cancer", "gradient_boosting", {"n_estimators": 20}, 0.9),
    ("digits", "logistic_regression", {}, 0.93),
])
def test_other_models_and_datasets_reach_sensible_accuracy(live_worker, alice, api, dataset, model, extra, floor):
    client = api(alice)

    task = run(client, "ml.train_classifier", {"dataset": dataset, "model": model, "cv_folds": 0, **extra},
               timeout=120)

    metrics = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]["metrics"]
    assert metrics["accuracy"] >= floor, metrics
    assert metrics["f1_macro"] >= floor - 0.05, metrics
    assert task["progress"]["metrics"] == {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"]}


def test_unknown_dataset_is_a_400_naming_the_field(live_worker, alice, api):
    response = api(alice).post("/api/v1/tasks/", {"algorithm": "ml.train_classifier",
                                                  "params": {"dataset": "mnist"}}, format="json")
    assert response.status_code == 400
    assert "params.dataset" in response.json()["error"]["fields"]


def test_cancel_stops_training_between_epochs(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "ml.train_classifier",
                  {"dataset": "digits", "model": "mlp", "epochs": 2000, "cv_folds": 0})
    wait_until(lambda: client.get(f"/api/v1/tasks/{task['id']}/").json()["progress"]["stage"] == "train",
               timeout=60, message="training to start")
    client.post(f"/api/v1/tasks/{task['id']}/cancel/")
    assert wait_final(client, task["id"], timeout=30)["status"] == "CANCELLED"
