"""DatabaseStorage's reads: many open downloads share a few connections, borrowed for one chunk read
at a time, and each still reads its own bytes whole and in order."""
from __future__ import annotations

import os

import pytest
from django.core.files.base import ContentFile
from django.db import connection

from algorithms import storage

pytestmark = pytest.mark.django_db(transaction=True)  # the reads come from other connections


def _read_connections() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'conveyor-storage-reads' "
                    "AND datname = current_database()")
        return cur.fetchone()[0]


def test_many_open_downloads_read_their_own_bytes_over_a_few_pooled_connections(settings):
    settings.STORAGE_READ_CONNECTIONS = 3
    storage._POOLS.clear()  # a pool of this size for this test
    db = storage.DatabaseStorage()
    blobs = [os.urandom(storage.CHUNK * 2 + 1000 + n) for n in range(12)]
    names = [db.save(f"tests/reads/{n}", ContentFile(blob)) for n, blob in enumerate(blobs)]

    readers = [db.open(name) for name in names]  # twelve downloads open at once, reading in turns
    got = [bytearray() for _ in readers]
    try:
        while any(len(g) < len(b) for g, b in zip(got, blobs)):
            for reader, buffer in zip(readers, got):
                buffer += reader.read(256 * 1024)
            assert _read_connections() <= 3
    finally:
        for reader in readers:
            reader.close()
    assert [bytes(g) for g in got] == blobs
    assert 1 <= _read_connections() <= 3  # kept for the next downloads, not one per download
