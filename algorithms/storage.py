"""``DatabaseStorage``: Django storage in PostgreSQL, the default for results and artifacts.

Web and workers may run on different hosts that share nothing but PostgreSQL and Redis, so the default
storage lives in the database they already share: a file is one ``StoredFile`` row and its bytes are
``StoredChunk`` rows of ``CHUNK`` bytes (``bytea`` kept uncompressed, out of line). Writing streams the
source chunk by chunk inside one transaction, so a file is stored whole or not at all; reading fetches
one chunk at a time (a 1 GiB file never sits in memory) over a connection borrowed for that one read
from a small pool of the process's own (downloads read from a thread pool, outside any request's
connection), so however many slow downloads are open, they hold at most ``STORAGE_READ_CONNECTIONS``.

S3 and compatible stores remain one setting away (README, "Results"); ``open_span`` reads them with one
ranged ``GetObject`` streamed as it arrives, not through django-storages' ``S3File``, which downloads the
whole object before its first byte.
"""
from __future__ import annotations

import io
import os
import threading
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage
from django.db import connection, transaction
from django.utils import timezone
from django.utils.deconstruct import deconstructible

CHUNK = 1024 * 1024
_POOLS: dict[int, Any] = {}  # by process id: a pool never crosses a fork (prefork workers)
_POOLS_LOCK = threading.Lock()


def _read_pool() -> Any:
    """The connections chunk reads borrow, one read at a time (opened on demand, closed when idle)."""
    from psycopg_pool import ConnectionPool

    pid = os.getpid()
    with _POOLS_LOCK:
        if pid not in _POOLS:
            params = connection.get_connection_params()
            params.pop("cursor_factory", None)
            params.pop("context", None)
            _POOLS.clear()
            _POOLS[pid] = ConnectionPool(kwargs={**params, "autocommit": True,
                                                 "application_name": "conveyor-storage-reads"},
                                         min_size=0, max_size=settings.STORAGE_READ_CONNECTIONS, timeout=30,
                                         max_idle=60, name="storage-reads", open=True)
        return _POOLS[pid]


@deconstructible
class DatabaseStorage(Storage):
    def _save(self, name: str, content: File) -> str:
        from algorithms.models import StoredChunk, StoredFile

        with transaction.atomic():
            stored = StoredFile.objects.create(name=name, size=0)
            size = 0
            for index, data in enumerate(_chunks(content)):
                StoredChunk.objects.create(file=stored, index=index, data=data)
                size += len(data)
            # created_at: when the write finished, the age the stray sweep measures (results.sweep_strays)
            StoredFile.objects.filter(pk=stored.pk).update(size=size, created_at=timezone.now())
        return name

    def _open(self, name: str, mode: str = "rb") -> File:
        if "w" in mode or "a" in mode or "+" in mode:
            raise ValueError("DatabaseStorage files are written with save(), opened read-only")
        from algorithms.models import StoredFile

        row = StoredFile.objects.filter(name=name).values_list("pk", "size").first()
        if row is None:
            raise FileNotFoundError(name)
        return File(io.BufferedReader(_ChunkReader(row[0], row[1]), CHUNK), name=name)

    def delete(self, name: str) -> None:
        from algorithms.models import StoredChunk, StoredFile

        with transaction.atomic():
            StoredChunk.objects.filter(file__name=name).delete()
            StoredFile.objects.filter(name=name).delete()

    def exists(self, name: str) -> bool:
        from algorithms.models import StoredFile

        return StoredFile.objects.filter(name=name).exists()

    def size(self, name: str) -> int:
        from algorithms.models import StoredFile

        try:
            return StoredFile.objects.values_list("size", flat=True).get(name=name)
        except StoredFile.DoesNotExist:
            raise FileNotFoundError(name) from None

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        from algorithms.models import StoredFile

        prefix = f"{path.rstrip('/')}/" if path else ""
        dirs: set[str] = set()
        files: list[str] = []
        for name in StoredFile.objects.filter(name__startswith=prefix).values_list("name", flat=True):
            head, _, tail = name[len(prefix):].partition("/")
            (dirs.add(head) if tail else files.append(head))
        return sorted(dirs), sorted(files)

    def url(self, name: str | None) -> str:
        raise NotImplementedError("stored files are served by the API (GET /api/v1/tasks/{id}/result/)")


def open_span(storage: Storage, name: str, start: int, end: int) -> IO[bytes]:
    """Bytes ``start``..``end`` (inclusive) of a stored file as a stream to ``read(n)`` and ``close()``.
    An S3-compatible storage answers one ranged ``GetObject`` whose body is read as it arrives; any other
    storage is opened and seeked. A missing file raises ``FileNotFoundError``."""
    if end < start:
        return io.BytesIO(b"")
    if _is_s3(storage):
        ranged = _s3_span(storage, name, start, end)
        if ranged is not None:
            return ranged
    fh = storage.open(name, "rb")
    if start:
        fh.seek(start)
    return fh


def _s3_span(storage: Any, name: str, start: int, end: int) -> IO[bytes] | None:
    """The ranged read, with the download parameters django-storages' own reads send (SSE-C keys,
    ``RequestPayer``, …). None for an object stored gzipped (``gzip: true`` compresses some types): a
    range of it would be of the compressed bytes, so that one is read as django-storages reads it."""
    from botocore.exceptions import ClientError
    from s3transfer.constants import ALLOWED_DOWNLOAD_ARGS
    from storages.utils import clean_name

    key = storage._normalize_name(clean_name(name))  # as S3Storage._open
    params = {k: v for k, v in storage.get_object_parameters(key).items() if k in ALLOWED_DOWNLOAD_ARGS}
    try:
        answer = storage.bucket.Object(key).get(Range=f"bytes={start}-{end}", **params)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404"):
            raise FileNotFoundError(f"{name} is not in the bucket") from None
        if code == "InvalidRange" and getattr(storage, "gzip", False):  # past a gzipped object's stored bytes
            return None
        raise
    if answer.get("ContentEncoding") == "gzip":
        answer["Body"].close()
        return None
    return answer["Body"]


def _is_s3(storage: Storage) -> bool:
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # django-storages[s3] is not installed: no S3 storage can be configured
        return False
    return isinstance(storage, S3Storage)  # default_storage, a LazyObject, passes on its wrapped class


def _chunks(content: File) -> Any:
    """``content`` in pieces of exactly ``CHUNK`` bytes (the last may be shorter)."""
    if hasattr(content, "seek"):
        content.seek(0)
    pending = bytearray()
    for piece in content.chunks(CHUNK):
        pending += piece
        while len(pending) >= CHUNK:
            yield bytes(pending[:CHUNK])
            del pending[:CHUNK]
    if pending:
        yield bytes(pending)


class _ChunkReader(io.RawIOBase):
    """Seekable read-only view of one stored file, one chunk fetched at a time."""

    def __init__(self, file_id: int, size: int) -> None:
        super().__init__()
        self._file_id, self._size, self._pos = file_id, size, 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size:
            return 0
        index, offset = divmod(self._pos, CHUNK)
        data = self._chunk(index)
        piece = data[offset:offset + len(buffer)]
        buffer[:len(piece)] = piece
        self._pos += len(piece)
        return len(piece)

    def _chunk(self, index: int) -> bytes:
        if self._cached is None or self._cached[0] != index:
            with _read_pool().connection() as conn:
                row = conn.execute('SELECT data FROM algorithms_storedchunk WHERE file_id = %s AND "index" = %s',
                                   (self._file_id, index)).fetchone()
            if row is None:
                raise OSError(f"stored file {self._file_id} lacks chunk {index}")
            self._cached = (index, bytes(row[0]))
        return self._cached[1]

    def close(self) -> None:
        self._cached = None
        super().close()
