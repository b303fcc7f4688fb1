"""Recovery (lost broker messages re-sent, dead workers' tasks re-run) runs only from beat's
``queueing.reconcile``: readiness and ``/metrics`` say when no pass completed for a while, or none ever did,
without taking the web process out of the load balancer (reported, not required)."""
from __future__ import annotations

import uuid

import pytest
import redis
from django.conf import settings as django_settings
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.edge.conftest import closed_port

pytestmark = pytest.mark.django_db

HINT = "is celery beat running, and a worker consuming the default queue?"
METRIC = "conveyor_reconciler_last_run_age_seconds"


@pytest.fixture
def stamp(monkeypatch):
    """A key of this test's own: the session's worker runs beat (``-B``) and stamps the real one."""
    from queueing import reconciler

    key = f"test:reconciler:last_pass:{uuid.uuid4().hex}"
    monkeypatch.setattr(reconciler, "LAST_PASS_KEY", key)
    client = redis.Redis.from_url(django_settings.REDIS_URL)

    def age(seconds: float) -> None:
        """Stamp a pass ``seconds`` ago by Redis' clock."""
        now, micros = client.time()
        client.set(key, str(now + micros / 1e6 - seconds))

    yield age
    client.delete(key)
    client.close()


def reconciler_check(anon) -> tuple[int, dict, dict]:
    response = anon.get("/api/v1/system/health/")
    body = response.json()
    return response.status_code, body, body["checks"]["reconciler"]


def scrape(client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {s.name: s.value for family in text_string_to_metric_families(response.content.decode())
            for s in family.samples if s.name.startswith("conveyor_reconciler")}


def test_a_completed_pass_makes_the_check_ok(anon, stamp):
    from queueing import reconciler

    assert set(reconciler.reconcile()) == {"resent", "reaped", "workers_lost", "dispatched"}

    code, body, check = reconciler_check(anon)
    assert code == 200 and body["status"] == "ok"
    assert check["ok"] is True and "error" not in check, check
    assert 0 <= check["last_run_seconds_ago"] < 5


def test_no_pass_recorded_is_not_ok_with_a_clear_error_but_readiness_stays_200(anon, stamp):
    code, body, check = reconciler_check(anon)
    assert code == 200 and body["status"] == "ok" and "error" not in body
    assert check["ok"] is False and check["last_run_seconds_ago"] is None
    assert check["error"] == f"no reconciler pass recorded: {HINT}"


def test_an_old_pass_is_not_ok_with_its_age_but_readiness_stays_200(anon, stamp):
    from queueing import reconciler

    limit = reconciler.stale_after()
    stamp(limit + 100)

    code, body, check = reconciler_check(anon)
    assert code == 200 and body["status"] == "ok" and "error" not in body
    assert check["ok"] is False and limit + 100 <= check["last_run_seconds_ago"] < limit + 110
    assert check["error"].startswith("last reconciler pass ") and check["error"].endswith(HINT)
    assert f"(more than {limit:g}s)" in check["error"]

    stamp(limit - 5)  # late, but within a few intervals: ok
    assert reconciler_check(anon)[2]["ok"] is True


def test_the_limit_is_a_few_of_beats_reconcile_intervals(settings):
    from config.celery import app
    from queueing import reconciler

    every = float(app.conf.beat_schedule["reconcile"]["schedule"])
    assert reconciler.interval() == every
    assert reconciler.stale_after() == reconciler.STALE_INTERVALS * every + reconciler.STALE_SLACK


def test_the_check_is_skipped_when_redis_is_down(anon, stamp, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = anon.get("/api/v1/system/health/")
    assert response.status_code == 503  # Redis is required; the reconciler's stamp is not read from it
    assert response.json()["checks"]["reconciler"] == {"ok": False, "error": "skipped: redis unreachable",
                                                       "last_run_seconds_ago": None}


def test_a_pass_completes_when_its_stamp_cannot_be_written(stamp, settings, caplog):
    from queueing import reconciler

    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    assert set(reconciler.reconcile()) == {"resent", "reaped", "workers_lost", "dispatched"}
    assert "could not record the reconciler pass" in caplog.text


def test_the_metric_is_the_age_of_the_last_pass_and_absent_when_none(client, stamp):
    from queueing import reconciler

    assert METRIC not in scrape(client)  # none recorded: absent (alert with absent())

    stamp(500)
    assert 500 <= scrape(client)[METRIC] < 510

    reconciler.reconcile()
    assert 0 <= scrape(client)[METRIC] < 5


def test_the_metric_is_absent_and_the_scrape_still_up_when_redis_is_down(client, stamp, settings):
    stamp(1)
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert METRIC not in text and "conveyor_metrics_up 1.0" in text


def test_with_beat_running_the_real_stamp_is_fresh(live_worker, anon):
    """The session's worker runs beat embedded: its passes keep the check ok."""
    def fresh() -> dict | None:
        check = reconciler_check(anon)[2]
        return check if check["ok"] else None

    check = wait_until(fresh, timeout=30, interval=0.5, message="a reconciler pass by the session's beat")
    assert check["last_run_seconds_ago"] < 5
