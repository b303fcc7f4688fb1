"""``ctx.progress()`` with a percent that is not a finite number (NaN, an infinity: a ratio of two
zeros, a diverging estimate) leaves the task's percent as it was, instead of showing NaN as 100 %; the
stage, message and metrics of that report go through, the first such percent of a run is logged as a
warning, and the task carries on. Runs go through ``jobs.runner.run`` on claimed tasks."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from jobs.models import Status, TaskEvent
from tests.jobs.test_nonfinite import run_once

pytestmark = pytest.mark.django_db(transaction=True)


def reports(task_id):
    return [(e.data["percent"], e.data["stage"], e.data["message"], e.data["metrics"])
            for e in TaskEvent.objects.filter(task_id=task_id, event="task.progress").order_by("seq")]


def logged(task_id):
    return [e.data["line"] for e in TaskEvent.objects.filter(task_id=task_id, event="task.log").order_by("seq")]


def test_a_non_finite_percent_leaves_the_percent_as_it_was_and_keeps_the_rest(alice, monkeypatch, caplog):
    def reports_nan(ctx, params):
        ctx.progress(40, stage="train", message="epoch 4")
        ctx.progress(float("nan"), stage="eval", message="0/0 batches", metrics={"loss": 0.3})
        ctx.progress(np.float64("inf"), stage="export")
        ctx.progress(float("-inf"), stage="done", message="last")
        return {"ok": True}

    with caplog.at_level(logging.WARNING, logger="algorithms.context"):
        task = run_once(alice, monkeypatch, reports_nan, max_retries=0)

    assert task.status == Status.SUCCEEDED, task.error
    assert reports(task.id) == [(40.0, "train", "epoch 4", {}), (40.0, "eval", "0/0 batches", {"loss": 0.3}),
                                (40.0, "export", "", {}), (40.0, "done", "last", {})]
    warnings = [line for line in logged(task.id) if "not a finite number" in line]
    assert warnings == ["[warning] progress percent nan is not a finite number: the percent is left at 40 "
                        "(further ones in this run are not logged)"]
    assert [r.getMessage() for r in caplog.records if "not a finite number" in r.getMessage()] == [
        f"task {task.id}: progress percent nan is not a finite number: the percent is left at 40 "
        "(further ones in this run are not logged)"]


def test_a_non_finite_first_percent_is_zero(alice, monkeypatch):
    def starts_with_nan(ctx, params):
        ctx.progress(float("nan"), stage="load")
        ctx.progress(25, stage="train")

    task = run_once(alice, monkeypatch, starts_with_nan, max_retries=0)

    assert task.status == Status.SUCCEEDED, task.error
    assert [(p, s) for p, s, _, _ in reports(task.id)] == [(0.0, "load"), (25.0, "train")]
