"""The default result storage: chunks in PostgreSQL, readable from any host that reaches the database."""
from __future__ import annotations

import io

import pytest
from django.core.files.base import ContentFile, File

from algorithms.storage import CHUNK, DatabaseStorage

pytestmark = pytest.mark.django_db(transaction=True)  # readers use a connection of their own


def payload(n: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def test_a_file_of_several_chunks_reads_back_whole_and_from_any_offset():
    storage = DatabaseStorage()
    data = payload(2 * CHUNK + 12345)
    name = storage.save("tasks/t1/1/result-result", ContentFile(data))

    assert storage.exists(name) and storage.size(name) == len(data)
    with storage.open(name) as fh:
        assert fh.read() == data
    with storage.open(name) as fh:
        fh.seek(CHUNK - 10)  # a Range that straddles two chunks
        assert fh.read(20) == data[CHUNK - 10:CHUNK + 10]
        fh.seek(-5, io.SEEK_END)
        assert fh.read() == data[-5:]
    assert storage.listdir("tasks/t1") == (["1"], [])


def test_the_same_name_twice_gets_a_new_name_and_delete_removes_the_bytes():
    storage = DatabaseStorage()
    first = storage.save("a/blob", ContentFile(b"one"))
    second = storage.save("a/blob", ContentFile(b"two"))
    assert first != second
    storage.delete(first)
    assert not storage.exists(first)
    with pytest.raises(FileNotFoundError):
        storage.open(first)
    with storage.open(second) as fh:
        assert fh.read() == b"two"


def test_a_source_that_fails_half_way_stores_nothing():
    class Broken(io.RawIOBase):
        sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            if self.sent >= 2 * CHUNK:
                raise OSError("disk went away")
            buffer[:] = b"x" * len(buffer)
            self.sent += len(buffer)
            return len(buffer)

    storage = DatabaseStorage()
    with pytest.raises(OSError):
        storage.save("b/broken", File(Broken(), name="broken"))
    assert not storage.exists("b/broken")
