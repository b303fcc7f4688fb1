"""``ml.train_classifier``: scikit-learn on the datasets that ship inside scikit-learn.

Progress comes as the model learns: per fold of the cross-validation (fold accuracy), then per
epoch (MLP: loss and accuracies), per boosting stage (training loss), or per batch of trees (random
forest: out-of-bag accuracy). The fitted model is stored as the artifact ``model.joblib``.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from algorithms.context import RunContext
from algorithms.registry import algorithm

# scikit-learn is imported when a task runs, not when the registry loads: web processes never need it.


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: Literal["iris", "digits", "wine", "breast_cancer"] = Field("iris", description="bundled with scikit-learn")
    model: Literal["logistic_regression", "random_forest", "gradient_boosting", "mlp"] = "logistic_regression"
    test_size: float = Field(0.25, gt=0.05, lt=0.8, description="held-out share for the final metrics")
    cv_folds: int = Field(3, ge=0, le=10, description="stratified folds on the training share; 0 or 1 = none")
    epochs: int = Field(60, ge=1, le=2000, description="MLP epochs; iterations for logistic regression")
    n_estimators: int = Field(100, ge=1, le=2000, description="trees (random forest) or stages (gradient boosting)")
    hidden_layer_sizes: list[int] = Field([64], min_length=1, max_length=5, description="MLP layers")
    learning_rate: float = Field(0.01, gt=0, le=1, description="MLP initial learning rate (adam)")
    seed: int = Field(0, ge=0, le=2**32 - 1)


class _Cancelled(Exception):
    pass


def _estimator(p: TrainParams) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if p.model == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=p.epochs, random_state=p.seed))
    if p.model == "random_forest":
        return RandomForestClassifier(n_estimators=p.n_estimators, random_state=p.seed, n_jobs=1)
    if p.model == "gradient_boosting":
        return GradientBoostingClassifier(n_estimators=p.n_estimators, random_state=p.seed)
    return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=tuple(p.hidden_layer_sizes),
                                                         max_iter=p.epochs, learning_rate_init=p.learning_rate,
                                                         random_state=p.seed))


def _fit(ctx: RunContext, p: TrainParams, X: Any, y: Any, X_val: Any, y_val: Any,
         report: Callable[[float, dict[str, Any], str], None]) -> Any:
    """Fit with progress as it comes: ``report(fraction, metrics, message)``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, log_loss

    model = _estimator(p)
    classes = np.unique(y)
    if p.model == "mlp":
        scaler, mlp = model.steps[0][1], model.steps[1][1]
        Xs, Xv = scaler.fit_transform(X), scaler.transform(X_val)
        for epoch in range(1, p.epochs + 1):
            if ctx.cancelled():
                raise _Cancelled
            mlp.partial_fit(Xs, y, classes=classes)
            report(epoch / p.epochs, {"epoch": epoch, "loss": round(float(mlp.loss_), 5),
                                      "accuracy": round(float(mlp.score(Xs, y)), 4),
                                      "val_accuracy": round(float(mlp.score(Xv, y_val)), 4)},
                   f"epoch {epoch}/{p.epochs}")
        return model
    if p.model == "random_forest":
        step = max(1, p.n_estimators // 10)
        model.set_params(warm_start=True, oob_score=True, n_estimators=0)
        while model.n_estimators < p.n_estimators:
            if ctx.cancelled():
                raise _Cancelled
            model.set_params(n_estimators=min(p.n_estimators, model.n_estimators + step))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # few trees: some samples have no OOB vote yet
                model.fit(X, y)
            report(model.n_estimators / p.n_estimators,
                   {"trees": model.n_estimators, "oob_accuracy": round(float(model.oob_score_), 4)},
                   f"{model.n_estimators}/{p.n_estimators} trees")
        return model
    if p.model == "gradient_boosting":
        def monitor(i: int, est: Any, _locals: Any) -> bool:
            report((i + 1) / p.n_estimators, {"stage": i + 1, "loss": round(float(est.train_score_[i]), 5)},
                   f"stage {i + 1}/{p.n_estimators}")
            return ctx.cancelled()  # True stops boosting early

        model.fit(X, y, monitor=monitor)
        if ctx.cancelled():
            raise _Cancelled
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    proba = model.predict_proba(X_val)
    report(1.0, {"iterations": int(model.steps[1][1].n_iter_[0]), "val_loss": round(float(log_loss(y_val, proba)), 5),
                 "val_accuracy": round(float(accuracy_score(y_val, classes[proba.argmax(1)])), 4)}, "fitted")
    return model


def _cross_validate(ctx: RunContext, p: TrainParams, X: Any, y: Any, span: tuple[float, float]) -> list[float]:
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import StratifiedKFold

    scores: list[float] = []
    folds = StratifiedKFold(n_splits=p.cv_folds, shuffle=True, random_state=p.seed)
    for k, (train, val) in enumerate(folds.split(X, y), start=1):
        if ctx.cancelled():
            raise _Cancelled
        model = clone(_estimator(p))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X[train], y[train])
        scores.append(float(accuracy_score(y[val], model.predict(X[val]))))
        pct = span[0] + (span[1] - span[0]) * k / p.cv_folds
        ctx.progress(pct, stage="cross_validate", message=f"fold {k}/{p.cv_folds}",
                     metrics={"fold": k, "accuracy": round(scores[-1], 4),
                              "mean_accuracy": round(float(np.mean(scores)), 4)})
    return scores


@algorithm(
    "ml.train_classifier",
    params=TrainParams,
    version="1.0",
    description="Trains a scikit-learn classifier on a bundled dataset; metrics, confusion matrix and model.joblib.",
    timeout_seconds=1800,
    examples=[{"dataset": "iris", "model": "logistic_regression"},
              {"dataset": "digits", "model": "mlp", "epochs": 30, "cv_folds": 0},
              {"dataset": "breast_cancer", "model": "gradient_boosting", "n_estimators": 50}],
)
def train_classifier(ctx: RunContext, p: TrainParams) -> dict[str, Any] | None:
    import joblib
    from sklearn import datasets
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
    from sklearn.model_selection import train_test_split

    started = time.monotonic()
    data = getattr(datasets, f"load_{p.dataset}")()
    X, y = data.data.astype(np.float64), data.target
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=p.test_size, stratify=y, random_state=p.seed)
    ctx.progress(2, stage="load", message=f"{p.dataset}: {len(X_train)} train / {len(X_test)} test",
                 metrics={"n_train": len(X_train), "n_test": len(X_test), "n_features": X.shape[1]})
    cv = p.cv_folds >= 2
    try:
        scores = _cross_validate(ctx, p, X_train, y_train, (2, 40)) if cv else []
        fit_from = 40 if cv else 2
        model = _fit(ctx, p, X_train, y_train, X_test, y_test,
                     lambda f, m, msg: ctx.progress(fit_from + (95 - fit_from) * f, stage="train", message=msg, metrics=m))
    except _Cancelled:
        return None
    predicted = model.predict(X_test)
    metrics: dict[str, Any] = {
        "accuracy": round(float(accuracy_score(y_test, predicted)), 4),
        "f1_macro": round(float(f1_score(y_test, predicted, average="macro")), 4),
        "confusion_matrix": confusion_matrix(y_test, predicted).tolist(),
    }
    if cv:
        metrics.update(cv_accuracy=[round(s, 4) for s in scores], cv_accuracy_mean=round(float(np.mean(scores)), 4),
                       cv_accuracy_std=round(float(np.std(scores)), 4))
    with ctx.open_artifact("model.joblib", content_type="application/octet-stream") as out:
        joblib.dump(model, out, compress=3)
    ctx.progress(100, stage="done", message=f"accuracy {metrics['accuracy']:.3f}",
                 metrics={"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"]})
    return {
        "dataset": p.dataset, "model": p.model, "n_train": len(X_train), "n_test": len(X_test),
        "n_features": int(X.shape[1]), "classes": [str(c) for c in data.target_names],
        "metrics": metrics, "artifacts": ["model.joblib"], "seconds": round(time.monotonic() - started, 3),
    }
