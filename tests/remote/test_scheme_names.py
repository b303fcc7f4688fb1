"""Who gets a scheme name two remote services advertise: first come, first served.

The service that holds a name (discovery accepted it there first) keeps it, whatever the names of
the services: a service registered later that advertises it is rejected, and the rejection is shown
on that later service. The name becomes free when its holder stops advertising it, or is disabled
or deleted; the next service to advertise it takes it at its next discovery. Local algorithms still
come before every service. Discovery clients are faked (``FakeService``): no network.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from algorithms.remote import client as c
from tests.conftest import unconsumed_queue

pytestmark = pytest.mark.django_db(transaction=True)


class _Finished(list):
    def close(self) -> None:
        pass


class FakeService:
    """A service that advertises ``names`` and records what it was asked to run."""

    def __init__(self, name: str, *names: str) -> None:
        self.name, self.names = name, list(names)
        self.down = False
        self.broken: set[str] = set()  # names advertised with a params_schema that is not a JSON Schema
        self.submitted: list[tuple[str, dict[str, Any]]] = []

    def schemes(self) -> list[dict[str, Any]]:
        if self.down:
            raise c.Unavailable("connection refused")
        return [{"name": n, "version": "1", "description": f"{n} of {self.name}",
                 "params_schema": {"type": 7} if n in self.broken else {"type": "object"}} for n in self.names]

    def submit(self, *, scheme: str, params: dict[str, Any], client_task_id: str, attempt: int) -> tuple[str, bool]:
        self.submitted.append((scheme, params))
        return f"{self.name}-{len(self.submitted)}", False

    def watch(self, remote_id: str, *, deadline: float | None = None) -> Any:
        return _Finished([c.Progress(state=c.SUCCEEDED, result={"ran_on": self.name})])

    def cancel(self, remote_id: str) -> bool:
        return True

    def fetch(self, remote_id: str, *, offset: int = 0) -> Iterator[bytes]:
        return iter(())


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeService]:
    """``fakes[name]`` answers for the service of that name (added by ``add``)."""
    found: dict[str, FakeService] = {}
    monkeypatch.setattr(c, "client_for", lambda service: found[service.name])
    return found


def add(fakes: dict[str, FakeService], name: str, *names: str) -> Any:
    """An operator registers a service; its first discovery runs (as saving it in the admin does)."""
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    fakes[name] = FakeService(name, *names)
    service = RemoteService.objects.create(name=name, kind="grpc", address="127.0.0.1:1")
    return discovery.refresh(service)


def rediscover(name: str) -> Any:
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    return discovery.refresh(RemoteService.objects.get(name=name))


def served_by(name: str) -> str | None:
    from algorithms import registry

    try:
        return getattr(registry.get(name), "service", None)
    except Exception:
        return None


def listed() -> dict[str, str]:
    from algorithms import registry

    return {a.name: a.service for a in registry.all_algorithms() if hasattr(a, "service")}


def error_of(name: str) -> str:
    from algorithms.remote.models import RemoteService

    return RemoteService.objects.get(name=name).discovery_error


def test_a_newcomer_whose_name_sorts_first_cannot_take_a_name_nor_the_tasks_queued_for_it(bob, fakes):
    """Team B's service holds ``teamb.train``; B's task is queued. Another team registers a service
    named ``aa-…`` that advertises the same name: B's task still runs on B's service, with B's params,
    and the rejection is shown on the newcomer, never on B's service."""
    from jobs import execution, runner, services
    from jobs.models import Status, Task

    assert add(fakes, "teamb-svc", "teamb.train").accepted == ["teamb.train"]
    spec = services.build_spec(algorithm="teamb.train", params={"secret_dataset": "team-b-only"},
                               queue=unconsumed_queue(), max_retries=0)
    task, _ = services.submit(owner=bob, spec=spec)
    Task.objects.filter(id=task.id).update(status=Status.QUEUED)

    newcomer = add(fakes, "aa-other-team", "teamb.train", "aa.own")  # registered later, sorts first
    again = rediscover("teamb-svc")  # beat: B's service is discovered again before the task runs
    outcome = runner.run(execution.claim(task_id=task.id, worker="w-1"))

    assert fakes["aa-other-team"].submitted == []
    assert fakes["teamb-svc"].submitted == [("teamb.train", {"secret_dataset": "team-b-only"})]
    assert outcome.status == Status.SUCCEEDED, outcome.error
    assert outcome.result == {"ran_on": "teamb-svc"}
    # The rejection is the newcomer's, and names the holder; B's service shows nothing wrong.
    assert newcomer.accepted == ["aa.own"]
    assert "already taken" in newcomer.rejected["teamb.train"] and "teamb-svc" in newcomer.rejected["teamb.train"]
    assert "teamb.train" in error_of("aa-other-team")
    assert again.accepted == ["teamb.train"] and again.rejected == {} and error_of("teamb-svc") == ""
    assert served_by("teamb.train") == "teamb-svc"
    assert listed()["teamb.train"] == "teamb-svc" and listed()["aa.own"] == "aa-other-team"
    assert rediscover("aa-other-team").accepted == ["aa.own"]  # and so it stays

def test_a_name_its_holder_stops_advertising_goes_to_the_next_service_at_its_next_discovery(fakes):
    add(fakes, "b-first", "shared.solve")
    assert add(fakes, "a-later", "shared.solve").accepted == []

    fakes["b-first"].names = []
    assert rediscover("b-first").accepted == []
    assert served_by("shared.solve") is None  # free, not yet taken

    assert rediscover("a-later").accepted == ["shared.solve"]
    assert served_by("shared.solve") == "a-later" and error_of("a-later") == ""

    fakes["b-first"].names = ["shared.solve"]  # the former holder comes back to it: now the later one
    assert "already taken" in rediscover("b-first").rejected["shared.solve"]
    assert served_by("shared.solve") == "a-later"


def test_a_disabled_holder_keeps_its_name_until_another_service_takes_it(fakes):
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    add(fakes, "b-first", "shared.solve")
    add(fakes, "a-later", "shared.solve")
    RemoteService.objects.filter(name="b-first").update(enabled=False)
    assert served_by("shared.solve") is None

    RemoteService.objects.filter(name="b-first").update(enabled=True)  # back before anyone took it
    assert served_by("shared.solve") == "b-first"

    RemoteService.objects.filter(name="b-first").update(enabled=False)
    reports = {r.service: r for r in discovery.refresh_all()}  # beat: only enabled services
    assert reports["a-later"].accepted == ["shared.solve"] and "b-first" not in reports

    RemoteService.objects.filter(name="b-first").update(enabled=True)
    assert served_by("shared.solve") == "a-later"  # before b-first's own discovery, too
    assert "already taken" in rediscover("b-first").rejected["shared.solve"]
    assert "shared.solve" in error_of("b-first") and error_of("a-later") == ""


def test_a_deleted_holder_frees_its_name(fakes):
    from algorithms.remote.models import RemoteService

    add(fakes, "b-first", "shared.solve")
    add(fakes, "a-later", "shared.solve")
    RemoteService.objects.filter(name="b-first").delete()

    assert rediscover("a-later").accepted == ["shared.solve"]
    assert served_by("shared.solve") == "a-later"


def test_an_unreachable_or_broken_holder_keeps_its_name(fakes):
    """Its last good cache still answers while it is down; a scheme it advertises with a broken schema
    is rejected on it, and the name stays its own (no other service takes it meanwhile)."""
    add(fakes, "b-first", "shared.solve")
    fakes["b-first"].down = True
    assert "discovery failed" in rediscover("b-first").error
    assert add(fakes, "a-later", "shared.solve").accepted == []
    assert served_by("shared.solve") == "b-first"

    fakes["b-first"].down = False
    fakes["b-first"].broken = {"shared.solve"}
    assert "not a valid JSON Schema" in rediscover("b-first").rejected["shared.solve"]
    assert "already taken" in rediscover("a-later").rejected["shared.solve"]

    fakes["b-first"].broken = set()
    assert rediscover("b-first").accepted == ["shared.solve"]
    assert served_by("shared.solve") == "b-first"


def test_local_algorithms_still_come_before_every_service(fakes):
    report = add(fakes, "a-svc", "demo.hello", "a.own")

    assert report.accepted == ["a.own"]
    assert "already taken" in report.rejected["demo.hello"]
    assert served_by("demo.hello") is None  # the local one


def test_a_cache_that_two_services_share_is_served_by_the_holder_whatever_their_names(fakes):
    """Caches written before names had holders (or by hand) may share a name: with no holder it is
    the first registered service's, for lookup, listing and discovery alike; its next discovery
    makes it the holder, and the other's rejects the name."""
    from algorithms.remote.models import RemoteSchemeName, RemoteService

    scheme = {"name": "shared.solve", "version": "1", "description": "", "params_schema": {"type": "object"}}
    RemoteService.objects.create(name="z-first", kind="grpc", address="127.0.0.1:1", schemes=[scheme])
    RemoteService.objects.create(name="a-second", kind="grpc", address="127.0.0.1:1", schemes=[scheme])
    assert served_by("shared.solve") == "z-first" and listed()["shared.solve"] == "z-first"

    fakes["a-second"] = FakeService("a-second", "shared.solve")
    fakes["z-first"] = FakeService("z-first", "shared.solve")
    assert "z-first" in rediscover("a-second").rejected["shared.solve"]
    assert rediscover("z-first").accepted == ["shared.solve"]
    assert RemoteSchemeName.objects.get(name="shared.solve").service.name == "z-first"
    assert served_by("shared.solve") == "z-first" and listed()["shared.solve"] == "z-first"


def test_the_migration_gives_each_cached_name_to_the_first_registered_service_that_caches_it():
    import importlib

    from django.apps import apps

    from algorithms.remote.models import RemoteSchemeName, RemoteService

    def scheme(name: str) -> dict[str, Any]:
        return {"name": name, "version": "1", "description": "", "params_schema": {"type": "object"}}

    RemoteService.objects.create(name="off", kind="grpc", address="x:1", enabled=False,
                                 schemes=[scheme("shared.solve"), scheme("off.only")])
    RemoteService.objects.create(name="z-first", kind="grpc", address="x:1", schemes=[scheme("shared.solve")])
    RemoteService.objects.create(name="a-second", kind="grpc", address="x:1",
                                 schemes=[scheme("shared.solve"), scheme("a.own")])
    migration = importlib.import_module("algorithms.migrations.0004_remote_scheme_names")

    migration.hold_cached_names(apps, None)

    held = dict(RemoteSchemeName.objects.values_list("name", "service__name"))
    assert held == {"shared.solve": "z-first", "a.own": "a-second", "off.only": "off"}
