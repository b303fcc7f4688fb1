"""A task whose remote service is away goes back to its queue after ``REMOTE_HOLD_AFTER_SECONDS``, not
after however long the backoff between calls happens to add up to: the waits are cut at the hold's
deadline. (On a clock of the test's own: no real waiting, no timed assertion.)"""
from __future__ import annotations

import types

import pytest

from algorithms.remote import bridge
from algorithms.remote import client as c
from algorithms.remote.models import RemoteService

pytestmark = pytest.mark.django_db


class Down:
    """A client whose service never answers."""

    def submit(self, **_: object) -> None:
        raise c.Unavailable("connection refused")


class Ctx:
    task_id, attempt, artifacts = "11111111-1111-1111-1111-111111111111", 1, None

    def cancelled(self) -> bool:
        return False

    def progress(self, *_: object) -> None:
        pass

    def flush(self) -> None:
        pass


def test_a_task_is_handed_back_at_the_hold_deadline_not_after_the_backoffs_sum(monkeypatch, settings):
    settings.REMOTE = {**settings.REMOTE, "HOLD_AFTER_SECONDS": 5.0, "RETRY_BASE_SECONDS": 0.5,
                       "RETRY_MAX_SECONDS": 15.0}
    RemoteService.objects.create(name="away", kind="grpc", address="127.0.0.1:9")
    now, held = [1000.0], []
    monkeypatch.setattr(bridge, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(bridge, "_sleep", lambda ctx, seconds: now.__setitem__(0, now[0] + seconds))
    monkeypatch.setattr(c, "client_for", lambda service: Down())
    monkeypatch.setattr(bridge.hold, "hold_for_service", lambda **kw: held.append(now[0]))

    assert bridge.run(Ctx(), {}, service_name="away", scheme="demo.hello_remote") is None

    # backoff 0.5 + 1 + 2, then 1.5 (not 4) to the deadline: handed back 5 s after the first failure, not 7.5
    assert held == [1005.0]
