"""Writing artifacts and large results to storage, in a stream.

``ArtifactStore`` is what ``ctx.open_artifact()`` and ``ctx.open_result()`` hand out: a write-only file
that hashes and counts as it goes, spools to a file in the task's scratch directory, and on close moves
that file into Django's default storage (a rename for the filesystem backend, a multipart upload for
S3) and records an ``Artifact`` row. Nothing is ever held whole in memory.

A row is written only while the task still runs under the store's claim (``claimed_at``, the claim's
``started_at``): a run taken for dead whose task was started again elsewhere stores nothing. Every
stored file has a name of its own (a uuid), so a storage that overwrites same-named files never loses
one; the file a row pointed at before is deleted once the row points at the new one (after commit).

``finalize_result()`` decides where a finished task's result lives: JSON up to ``RESULT_INLINE_MAX``
bytes goes back inline (``Task.result``); anything larger, or holding a NUL character (which jsonb
cannot store), is encoded in chunks into a stored result. A float that is NaN or infinite, which JSON
cannot hold, is written as the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` in either, a NumPy
scalar or array as the Python number or list it holds, as in a summary; a value with no faithful JSON
form (a set, a Decimal, a model object) fails the task at once, named (``jobs.jsonsafe``).

A file is stored only by ``close()`` or by leaving its ``with`` block without an exception, in text
mode as in binary: one left open when the run fails or is cancelled, one whose ``with`` block raised,
and one merely dropped (its finalizer) are thrown away, never stored half-written.
"""
from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import transaction
from django.utils import timezone
from django.utils.text import get_valid_filename

from algorithms.context import Scratch
from algorithms.models import Artifact
from jobs.jsonsafe import json_safe

RESULT_NAME = "result"
_NOTHING = object()
NAME_MAX = Artifact._meta.get_field("name").max_length
_CONTENT_TYPE_MAX = Artifact._meta.get_field("content_type").max_length
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE = re.compile(rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*')
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL, not an escaped backslash + "u0000"


class TaskLost(RuntimeError):
    """The task no longer runs under this run's claim (reaped and started again, or already final)."""


def clean_name(name: str) -> str:
    """The artifact name stored for ``name``: its last path part made safe for a file name."""
    try:
        clean = get_valid_filename(os.path.basename(name))
    except SuspiciousFileOperation:
        clean = ""
    if not clean:
        raise ValueError(f"invalid artifact name {name!r}: nothing of it is usable in a file name")
    if len(clean) > NAME_MAX:
        raise ValueError(f"artifact name {name!r} is longer than {NAME_MAX} characters")
    return clean


def valid_content_type(value: str | None) -> str | None:
    """``value`` if it is a media type (``type/subtype`` with optional parameters), else None."""
    return value if value and _CONTENT_TYPE.fullmatch(value) else None


class _SpooledFile(File):
    """A finished local file; ``temporary_file_path`` lets FileSystemStorage move it instead of copying."""

    def temporary_file_path(self) -> str:
        return str(self.name)


class ArtifactWriter(io.BufferedIOBase):
    """Binary write-only stream into storage; ``close()`` (or leaving ``with`` without an exception) stores
    it, ``abort()`` (or leaving ``with`` by an exception, or being dropped unclosed) throws it away."""

    def __init__(self, store: ArtifactStore, *, kind: str, name: str, content_type: str,
                 summary: dict[str, Any] | None) -> None:
        super().__init__()
        self._store, self.kind, self.name = store, kind, name
        self.content_type, self.summary = content_type, dict(summary or {})
        fd, path = tempfile.mkstemp(dir=store.scratch_dir, prefix="artifact-")
        self._path = Path(path)
        self._file = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.size = 0
        self.artifact: Artifact | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self._file.write(view)
        self._sha.update(view)
        self.size += len(view)
        return len(view)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._file.close()
            self.artifact = self._store.commit(self, self._path, self._sha.hexdigest())
        finally:
            self._path.unlink(missing_ok=True)
            super().close()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # the block raised: what it wrote is half of what was meant
            self.abort()

    def __del__(self) -> None:
        self.abort()  # a writer nobody closed is dropped, never stored half-written from a finalizer

    def abort(self) -> None:
        """Drop what was written (the algorithm failed half-way)."""
        if not self.closed:
            self._file.close()
            self._path.unlink(missing_ok=True)
            super().close()


class TextArtifactWriter(io.TextIOWrapper):
    """UTF-8 text over an ``ArtifactWriter``, stored the same way: by ``close()`` or a ``with`` block left
    without an exception, never by a finalizer (a plain ``TextIOWrapper`` closes its writer when it is
    dropped, which would store it half-written)."""

    def __init__(self, writer: ArtifactWriter) -> None:
        super().__init__(writer, encoding="utf-8", write_through=True)

    @property
    def artifact(self) -> Artifact | None:
        return self.buffer.artifact

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # replaces IOBase's finalizer, which closes
        self.abort()

    def abort(self) -> None:
        """Drop what was written, with anything not yet passed to the writer."""
        try:
            writer = self.buffer
        except ValueError:  # detached (or never made): nothing of this wrapper to drop
            return
        writer.abort()


class ArtifactStore:
    """Artifacts of one attempt of one task."""

    def __init__(self, *, task_id: str, attempt: int, claimed_at: Any, scratch: Scratch) -> None:
        self.task_id, self.attempt, self.claimed_at, self._scratch = task_id, attempt, claimed_at, scratch
        self._open: list[ArtifactWriter | TextArtifactWriter] = []
        self.result: Artifact | None = None

    @property
    def scratch_dir(self) -> Path:
        return self._scratch.path

    def open(self, name: str, mode: str = "wb", *, content_type: str | None = None,
             summary: dict[str, Any] | None = None, kind: str = Artifact.Kind.FILE) -> Any:
        if mode not in {"w", "wb", "wt"}:
            raise ValueError("artifacts are write-only: mode 'wb' (bytes) or 'w' (text, UTF-8)")
        clean = clean_name(name) if kind == Artifact.Kind.FILE else RESULT_NAME
        if content_type is not None and len(content_type) > _CONTENT_TYPE_MAX:
            raise ValueError(f"content type of {clean!r} is longer than {_CONTENT_TYPE_MAX} characters")
        guessed = mimetypes.guess_type(clean)[0] or ("text/plain" if mode != "wb" else "application/octet-stream")
        summary = json_safe(dict(summary or {}), "summary")  # NaN, NumPy…: before a file is made
        writer = ArtifactWriter(self, kind=kind, name=clean, summary=summary,
                                content_type=valid_content_type(content_type or guessed) or "application/octet-stream")
        handle = writer if mode == "wb" else TextArtifactWriter(writer)
        self._open.append(handle)  # the text one too: closed or dropped with the run, never by its finalizer
        return handle

    def add_file(self, path: Path, *, name: str | None = None, content_type: str | None = None) -> Artifact:
        """Store an existing local file (an external program's output) as an artifact, streamed."""
        with open(path, "rb") as src, self.open(name or path.name, "wb", content_type=content_type) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        assert dst.artifact is not None
        return dst.artifact

    def commit(self, writer: ArtifactWriter, path: Path, sha256: str) -> Artifact:
        """Store the finished file and its row, or nothing: the row is written (or repointed, for a name
        written again) only while the task runs under this claim, checked under its row lock.

        With the default ``DatabaseStorage`` the file and its row are one transaction: a worker killed
        half-way (SIGKILL, the OOM killer) leaves neither. The task's row is locked only at the end, after
        the upload. Another storage writes outside the database: a kill between the upload and the row
        leaves a file no row names, which ``results.sweep_strays`` deletes once it is old enough."""
        name = f"tasks/{self.task_id}/{self.attempt}/{writer.kind}-{uuid.uuid4().hex}"
        if _saves_in_database():
            with transaction.atomic():  # DatabaseStorage's own atomic becomes a savepoint of this one
                storage_name = self._save(name, path)
                self._hold_claim()
                artifact = self._record(writer, storage_name, sha256)
        else:
            storage_name = self._save(name, path)
            recorded = False
            try:
                with transaction.atomic():
                    self._hold_claim()
                    artifact = self._record(writer, storage_name, sha256)
                    # Set before the commit: a time limit raised into this thread (``TaskTimeout``) just after
                    # the commit must not delete the file its row points at (at worst a file is left over).
                    recorded = True
            except BaseException:
                if not recorded:
                    delete_stored(storage_name)
                raise
        if writer.kind == Artifact.Kind.RESULT:
            self.result = artifact
        return artifact

    @staticmethod
    def _save(name: str, path: Path) -> str:
        with open(path, "rb") as spooled:
            return default_storage.save(name, _SpooledFile(spooled, name=str(path)))

    def _hold_claim(self) -> None:
        from jobs.models import Status, Task

        if not Task.objects.select_for_update(no_key=True).filter(
                id=self.task_id, status=Status.RUNNING, started_at=self.claimed_at).exists():
            raise TaskLost(f"task {self.task_id} no longer runs under this claim; its output was not stored")

    def _record(self, writer: ArtifactWriter, storage_name: str, sha256: str) -> Artifact:
        values = {"storage_name": storage_name, "size": writer.size, "sha256": sha256, "attempt": self.attempt,
                  "content_type": writer.content_type, "summary": writer.summary, "expired_at": None}
        artifact = Artifact.objects.filter(task_id=self.task_id, kind=writer.kind, name=writer.name).first()
        if artifact is None:  # the name is new
            return Artifact.objects.create(task_id=self.task_id, kind=writer.kind, name=writer.name, **values)
        delete_after_commit(artifact.storage_name)  # the same name written again: the row points at the new file
        for field, value in values.items():
            setattr(artifact, field, value)
        artifact.created_at = timezone.now()
        artifact.save()
        return artifact

    def close_open(self) -> None:
        """The algorithm returned as it was meant to: store what it left open."""
        for writer in self._open:
            writer.close()

    def abort_open(self) -> None:
        """The run failed, was cancelled or lost its task: drop what is still open, half-written."""
        for writer in self._open:
            writer.abort()


def _saves_in_database() -> bool:
    """The default storage writes in this process's database connection (``DatabaseStorage``), so a file
    and its row can be one transaction."""
    from algorithms.storage import DatabaseStorage

    return isinstance(default_storage, DatabaseStorage)  # a LazyObject passes on its wrapped class


def delete_file(artifact: Artifact) -> None:
    if artifact.storage_name:
        delete_stored(artifact.storage_name)


def delete_after_commit(storage_name: str) -> None:
    """Delete a stored file once the transaction that lets go of it commits (a rolled-back one leaves
    the row pointing at it)."""
    if storage_name:
        transaction.on_commit(lambda: delete_stored(storage_name), robust=True)


def delete_stored(name: str) -> None:
    """Delete a stored file and, on the file system, the folders it leaves empty up to ``tasks/``: a task's
    ``tasks/<id>/<attempt>/`` stayed for ever after its files went (two folders a task, millions a day at
    scale, each walked by the hourly stray sweep, until the inodes ran out). A folder something was written
    into meanwhile is not empty, and stays."""
    default_storage.delete(name)
    if not isinstance(default_storage, FileSystemStorage):
        return
    root = Path(default_storage.path("tasks"))
    folder = Path(default_storage.path(name)).parent
    while root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (another file, a new attempt's folder), or gone already
            return
        folder = folder.parent


def discard(task_ids: list[Any]) -> None:
    """A task going back to run again starts clean: the rows of what an interrupted or failed run stored
    go in this transaction, their files after it commits (``algorithms.signals``)."""
    Artifact.objects.filter(task_id__in=task_ids).delete()


def summarize(obj: Any) -> dict[str, Any]:
    """A few words about a JSON value, small enough for the task detail."""
    if isinstance(obj, dict):
        return {"type": "object", "keys": list(obj)[:20], "length": len(obj)}
    if isinstance(obj, list):
        return {"type": "array", "length": len(obj)}
    return {"type": type(obj).__name__}


def finalize_result(store: ArtifactStore, obj: Any) -> Any:
    """The value for ``Task.result``: ``obj`` itself when its JSON fits inline, else None with ``obj``
    encoded chunk by chunk into a stored result. A result streamed with ``ctx.open_result()`` wins.
    Non-finite floats become strings in both, NumPy values Python ones; a value with no faithful JSON
    form raises ``NotJsonSerialisable`` (not retried) before anything is stored (``jobs.jsonsafe``)."""
    if store.result is not None or obj is None:
        return None if store.result is not None else obj
    obj = json_safe(obj, "result")  # NaN, ±Infinity: "NaN"…; NumPy: Python values; never a retried task
    limit = settings.CONVEYOR["RESULT_INLINE_MAX"]
    head: list[str] = []
    size = 0
    chunks = json.JSONEncoder(ensure_ascii=False, allow_nan=False).iterencode(obj)
    for chunk in chunks:
        head.append(chunk)
        size += len(chunk.encode())
        if size > limit:
            break
    else:
        if not _JSON_NUL.search("".join(head)):
            return obj
    with store.open(RESULT_NAME, "w", content_type="application/json", summary=summarize(obj),
                    kind=Artifact.Kind.RESULT) as out:
        out.write("".join(head))
        del head
        for chunk in chunks:
            out.write(chunk)
    return None
