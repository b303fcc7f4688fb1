"""``manage.py check --database`` warns when PostgreSQL's autovacuum is off (jobs/checks.py), read from
the real server: this machine's PostgreSQL runs with it off; the test follows whatever it says."""
from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection

pytestmark = pytest.mark.django_db


def server_autovacuum() -> str:
    with connection.cursor() as cur:
        cur.execute("SHOW autovacuum")
        return cur.fetchone()[0]


def test_check_database_warns_exactly_when_autovacuum_is_off():
    out = io.StringIO()
    try:
        call_command("check", databases=["default"], stdout=out, stderr=out)
    except SystemCheckError as error:  # a warning is not an error; anything else here is a failure
        pytest.fail(str(error))
    warned = "conveyor.W001" in out.getvalue()
    assert warned == (server_autovacuum() != "on"), out.getvalue()
    if warned:
        assert "autovacuum is off on database 'default'" in out.getvalue()


def test_the_check_is_not_run_without_the_database():
    out = io.StringIO()
    call_command("check", stdout=out, stderr=out)
    assert "conveyor.W001" not in out.getvalue()
