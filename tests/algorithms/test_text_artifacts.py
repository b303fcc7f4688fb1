"""A file an algorithm writes is stored only by ``close()`` or by leaving its ``with`` block without an
exception, in text mode (``ctx.open_artifact(name, "w")``) as in binary: one left open when the task is
cancelled or fails is dropped, never stored half-written by a finalizer (a plain ``TextIOWrapper`` closes
its writer when the algorithm's frame drops it, which stored the file), and so is one whose ``with``
block raised. Runs go through ``jobs.runner.run`` on claimed tasks, artifacts come out of the REST API."""
from __future__ import annotations

import gc

import pytest

from algorithms.models import Artifact
from jobs.models import Status
from tests.algorithms.test_artifact_ownership import listed
from tests.jobs.test_nonfinite import run_once

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_a_file_left_open_when_the_task_is_cancelled_is_dropped(alice, api, monkeypatch, mode):
    def stops_as_asked(ctx, params):
        with ctx.open_artifact("done.csv", mode) as done:
            done.write("complete\n" if mode == "w" else b"complete\n")
        out = ctx.open_artifact("partial.csv", mode)  # not yet closed
        out.write("row1\n" if mode == "w" else b"row1\n")
        ctx._cancel.set()  # stands for a user's cancel arriving now
        if ctx.cancelled():
            return None  # as docs/algorithms.md's example does: its frame drops ``out``

    task = run_once(alice, monkeypatch, stops_as_asked, max_retries=0)
    gc.collect()

    assert task.status == Status.CANCELLED
    assert listed(api(alice), task) == {"done.csv": b"complete\n"}


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_a_file_left_open_when_the_task_fails_is_dropped(alice, monkeypatch, mode):
    def fails(ctx, params):
        out = ctx.open_artifact("half.csv", mode)
        out.write("row1\n" if mode == "w" else b"row1\n")
        raise ValueError("bad input file")

    task = run_once(alice, monkeypatch, fails, max_retries=0)
    gc.collect()

    assert task.status == Status.FAILED and task.error == "ValueError: bad input file"
    assert not Artifact.objects.filter(task_id=task.id).exists()


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_a_with_block_that_raises_stores_nothing_of_its_file(alice, api, monkeypatch, mode):
    def recovers(ctx, params):
        try:
            with ctx.open_artifact("broken.csv", mode) as out:
                out.write("row1\n" if mode == "w" else b"row1\n")
                raise ValueError("row 2 is bad")
        except ValueError:
            pass  # the algorithm goes on: the half-written file is not part of its output
        with ctx.open_artifact("good.csv", mode) as out:
            out.write("ok\n" if mode == "w" else b"ok\n")
        return {"ok": True}

    task = run_once(alice, monkeypatch, recovers, max_retries=0)

    assert task.status == Status.SUCCEEDED, task.error
    assert listed(api(alice), task) == {"good.csv": b"ok\n"}


def test_a_text_file_left_open_when_the_algorithm_returns_is_stored_whole(alice, api, monkeypatch):
    def returns(ctx, params):
        out = ctx.open_artifact("rows.csv", "w")
        out.write("a,b\n")
        out.writelines(f"{i},{i * i}\n" for i in range(3))
        return {"ok": True}  # left open: stored once the algorithm has returned, as in binary mode

    task = run_once(alice, monkeypatch, returns, max_retries=0)

    assert task.status == Status.SUCCEEDED, task.error
    assert listed(api(alice), task) == {"rows.csv": b"a,b\n0,0\n1,1\n2,4\n"}


def test_a_text_file_closed_by_hand_is_stored_and_tells_its_artifact(alice, api, monkeypatch):
    seen = []

    def closes(ctx, params):
        out = ctx.open_artifact("notes.txt", "w")
        out.write("h\u00e9llo\n")
        out.close()
        seen.append(out.artifact.size)
        return None

    task = run_once(alice, monkeypatch, closes, max_retries=0)

    assert task.status == Status.SUCCEEDED, task.error
    assert listed(api(alice), task) == {"notes.txt": "h\u00e9llo\n".encode()}
    assert seen == [7]
