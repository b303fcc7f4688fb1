"""Operating remote services: the services file, beat discovery and health, readiness, the admin."""
from __future__ import annotations

import pytest
from django.test import Client

from tests.remote.conftest import ServiceProcess, register

pytestmark = pytest.mark.django_db(transaction=True)


def test_services_file_registers_services_and_disables_removed_ones(tmp_path, monkeypatch):
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    monkeypatch.setenv("REF_TOKEN", "s3cret")
    path = tmp_path / "remote_services.toml"
    path.write_text('[[service]]\nname = "ref-grpc"\nkind = "grpc"\naddress = "127.0.0.1:1"\n'
                    'auth_token_env = "REF_TOKEN"\ncall_timeout = 7\n\n'
                    '[[service]]\nname = "ref-ws"\nkind = "ws"\naddress = "ws://127.0.0.1:2/"\n')

    assert discovery.sync_file(path) == ["ref-grpc", "ref-ws"]
    grpc = RemoteService.objects.get(name="ref-grpc")
    assert (grpc.source, grpc.auth_token, grpc.call_timeout, grpc.enabled) == ("file", "s3cret", 7.0, True)

    path.write_text('[[service]]\nname = "ref-ws"\nkind = "ws"\naddress = "ws://127.0.0.1:2/"\n')
    discovery.sync_file(path)
    assert RemoteService.objects.get(name="ref-grpc").enabled is False


def test_beat_discovers_and_checks_health(grpc_service):
    from algorithms.remote import tasks
    from algorithms.remote.models import RemoteService
    from config.celery import app

    RemoteService.objects.create(name="ref-grpc", kind="grpc", address=grpc_service.address, connect_timeout=1)

    assert "demo.hello_remote" in tasks.discover()["ref-grpc"]
    assert tasks.check_health() == {"ref-grpc": True}
    grpc_service.kill()
    assert tasks.check_health() == {"ref-grpc": False}
    schedule = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert {"algorithms.remote.discover", "algorithms.remote.check_health"} <= schedule


def test_readiness_reports_each_remote_service(grpc_service):
    from algorithms.remote import discovery

    service, _ = register("ref-grpc", "grpc", grpc_service.address)
    grpc_service.kill()
    discovery.check_health(service)

    response = Client().get("/api/v1/system/health/")

    remote = response.json()["checks"]["remote_services"]
    assert remote["ok"] is False and remote["services"]["ref-grpc"]["health"] == "down"
    assert "ref-grpc" in remote["error"]
    assert response.status_code == 200, response.json()  # reported, not required: a down service is no reason to leave the load balancer


def test_admin_discovery_shows_rejected_schemes_as_an_error():
    from django.contrib.auth.models import User

    from algorithms.remote.models import RemoteService

    broken = ServiceProcess("examples/grpc_service/server.py", "--broken-scheme")
    broken.start()
    try:
        service = RemoteService.objects.create(name="ref-grpc", kind="grpc", address=broken.address)
        admin = User.objects.create_superuser("root", "root@example.com", "pw")
        client = Client()
        client.force_login(admin)

        response = client.post("/admin/algorithms/remoteservice/",
                               {"action": "discover_now", "_selected_action": [service.pk]}, follow=True)
    finally:
        broken.kill()

    text = response.content.decode()
    assert response.status_code == 200
    assert client.get("/admin/algorithms/remoteservice/add/").status_code == 200
    assert "demo.broken_remote" in text and "rejected" in text and "not a valid JSON Schema" in text
    assert "demo.hello_remote" in text


def test_auth_token_is_sent_and_a_wrong_one_is_a_discovery_error():
    from algorithms.remote import discovery
    from algorithms.remote.models import RemoteService

    guarded = ServiceProcess("examples/grpc_service/server.py", "--token", "s3cret")
    guarded.start()
    try:
        good = RemoteService.objects.create(name="good", kind="grpc", address=guarded.address, auth_token="s3cret")
        bad = RemoteService.objects.create(name="bad", kind="grpc", address=guarded.address, auth_token="nope")
        accepted, refused = discovery.refresh(good), discovery.refresh(bad)
    finally:
        guarded.kill()

    assert "demo.hello_remote" in accepted.accepted
    assert refused.accepted == [] and "UNAUTHENTICATED" in refused.error
