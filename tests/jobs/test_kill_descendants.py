"""Killing a pool child with what its run started, when some process cannot be signalled (a descendant that
changed its uid: a setuid helper, ``sudo``), or some pool child cannot be killed: the others still are, and
nothing is left stopped for ever (holding its memory, a GPU) nor a shutdown waiting for ever.

``os.kill`` refuses here through a stand-in for the one process of another uid (the tests run as one user):
real processes, real signals, and one ``PermissionError`` where the kernel would give it."""
from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from jobs import runner
from queueing import heartbeat, reconciler
from tests.conftest import queued_tasks, wait_until


def state(pid: int) -> str | None:
    """Its state letter in /proc (``T``: stopped, ``Z``: a zombie); None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[0]


def test_a_descendant_that_may_not_be_signalled_leaves_none_of_the_others_stopped(monkeypatch, caplog):
    """The second process SIGSTOP goes to refuses every signal: the one stopped before it was never killed
    (it was not yet among those the ``finally`` kills), the walk ended there, and the error reached the
    caller. Now both others are killed, the refusing one is logged once, and nothing is raised."""
    parent = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & sleep 60 & sleep 60 & wait"], start_new_session=True)
    real_kill = os.kill
    children = wait_until(lambda: len(found := runner._descendants(parent.pid, None)) == 3 and sorted(found),
                          message="the three sleeps")
    stops: list[int] = []
    refusing: set[int] = set()
    sent: list[tuple[int, int]] = []

    def kill(pid: int, sig: int) -> None:
        if sig == signal.SIGSTOP:
            stops.append(pid)
            if len(stops) == 2:  # one is stopped already
                refusing.add(pid)
        if abs(pid) in refusing:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        sent.append((pid, sig))
        real_kill(pid, sig)

    monkeypatch.setattr(runner.os, "kill", kill)
    try:
        with caplog.at_level(logging.WARNING, logger="jobs.runner"):
            killed = runner.kill_descendants(parent.pid)
        monkeypatch.undo()

        [refused] = refusing
        others = [c for c in children if c != refused]
        assert killed == others
        assert all((c, signal.SIGKILL) in sent for c in others)
        wait_until(lambda: all(state(c) in (None, "Z") for c in others), timeout=5, message="the others gone")
        assert state(refused) not in (None, "Z", "T"), "only the refusing one runs on, and it was never stopped"
        said = [r.getMessage() for r in caplog.records if "could not kill" in r.getMessage()]
        assert said == [f"could not kill 1 process(es) below {parent.pid}, left running: {refused} "
                        "(Operation not permitted)"]
    finally:
        for pid in children:
            try:
                real_kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.wait(timeout=10)


def _failing_kills(monkeypatch: pytest.MonkeyPatch, failing: int) -> list[int]:
    """``_kill_pool_child`` raises for ``failing`` (as ``kill_descendants`` did on a process of another uid);
    the pids it was called with are noted."""
    tried: list[int] = []

    def kill(pid: int) -> None:
        tried.append(pid)
        if pid == failing:
            raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(heartbeat, "_kill_pool_child", kill)
    return tried


@pytest.mark.django_db(transaction=True)
def test_the_shutdown_hand_back_kills_every_pool_child_even_when_one_kill_fails(alice, monkeypatch, caplog):
    """The first child's kill raised: the loop ended there, the other children ran on, their tasks were
    never handed back, and the warm shutdown waited for them for ever."""
    [task] = queued_tasks(alice, 1)
    type(task).objects.filter(id=task.id).update(status="RUNNING", worker="w-stopping")
    consumer = SimpleNamespace(pool=SimpleNamespace(_pool=SimpleNamespace(_pool=[
        SimpleNamespace(pid=pid) for pid in (101, 102, 103)])))
    monkeypatch.setitem(heartbeat._state, "hostname", "w-stopping")
    monkeypatch.setitem(heartbeat._state, "consumer", consumer)
    tried = _failing_kills(monkeypatch, failing=101)
    done: list[str] = []
    monkeypatch.setattr(heartbeat, "_wait_gone", lambda pids, timeout=5.0: done.append(f"waited {pids}"))
    monkeypatch.setattr(heartbeat, "_reap_orphaned_programs", lambda: done.append("reaped"))
    monkeypatch.setattr(reconciler, "hand_back", lambda worker: done.append(f"handed back {worker}"))

    with caplog.at_level(logging.ERROR, logger="queueing.heartbeat"):
        heartbeat._hand_back_after(0)

    assert tried == [101, 102, 103]
    assert done == ["waited [101, 102, 103]", "reaped", "handed back w-stopping"]
    assert [r.getMessage() for r in caplog.records] == [
        "could not kill pool child 101, or the processes its run started"]


def test_a_stuck_task_whose_child_cannot_be_killed_leaves_the_next_one_stopped_and_is_not_given_up(monkeypatch):
    """Two tasks found stuck at one beat; the first one's kill raises. The second is still stopped and given
    up; the first is not given up while its child runs (it could run here and elsewhere at once)."""
    stuck = {"t-1": (2.0, "claim-1"), "t-2": (2.0, "claim-2")}
    monkeypatch.setattr(reconciler, "stuck_running", lambda worker: stuck)
    monkeypatch.setattr(reconciler, "still_running", lambda **kw: True)
    requests = {"t-1": SimpleNamespace(worker_pid=201), "t-2": SimpleNamespace(worker_pid=202)}
    monkeypatch.setattr(heartbeat, "_running_requests", lambda: requests)
    monkeypatch.setattr(heartbeat, "_still_its_child", lambda request, pid: True)
    tried = _failing_kills(monkeypatch, failing=201)
    monkeypatch.setattr(heartbeat, "_wait_gone", lambda pids, timeout=5.0: None)
    monkeypatch.setattr(heartbeat, "_gone", lambda pid: pid != 201)  # the one not killed runs on
    monkeypatch.setattr(heartbeat, "_reap_orphaned_programs", lambda: [])
    given_up: list[str] = []
    monkeypatch.setattr(reconciler, "give_up_stuck", lambda task_id, **kw: given_up.append(task_id))

    heartbeat._stop_stuck("w-stuck")

    assert tried == [201, 202]
    assert given_up == ["t-2"]
