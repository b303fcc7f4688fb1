"""The suite's own flush (tests/dbflush.py): what one transactional test leaves, the next never sees."""
from __future__ import annotations

import pytest
from django.db import connection

from jobs import services
from tests.dbflush import _KEPT

pytestmark = pytest.mark.django_db(transaction=True)


def model_tables_with_rows() -> list[str]:
    tables = set(connection.introspection.django_table_names(only_existing=True, include_views=False)) - _KEPT
    with connection.cursor() as cur:
        cur.execute(" UNION ALL ".join(f"SELECT '{t}' WHERE EXISTS (SELECT 1 FROM {connection.ops.quote_name(t)})"
                                       for t in sorted(tables)))
        return [row[0] for row in cur.fetchall()]


def test_a_test_writes_rows_in_many_tables(alice, olga):
    services.submit(owner=alice, spec=services.build_spec(algorithm="demo.noop", labels=["left-behind"]))
    assert {"auth_user", "jobs_task", "jobs_taskevent", "queueing_queuecount"} <= set(model_tables_with_rows())


def test_the_next_test_finds_the_tables_it_wrote_empty():
    # Runs after the one above (file order): whichever flush ended it, nothing of it is left (the
    # session's live worker, if running, may have written its own rows since: its registry, its
    # counters), and post_migrate's tables are still there for Django's permissions.
    assert not {"auth_user", "jobs_task", "jobs_taskevent"} & set(model_tables_with_rows())
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM auth_permission")
        assert cur.fetchone()[0] > 0
