"""Writing artifacts and large results to storage, in a stream.

``ArtifactStore`` is what ``ctx.open_artifact()`` and ``ctx.open_result()`` hand out: a write-only file
that hashes and counts as it goes, spools to a file in the task's scratch directory, and on close moves
that file into Django's default storage (a rename for the filesystem backend, a multipart upload for
S3) and records an ``Artifact`` row. Nothing is ever held whole in memory.

``finalize_result()`` decides where a finished task's result lives: JSON up to ``RESULT_INLINE_MAX``
bytes goes back inline (``Task.result``); anything larger is encoded in chunks into a stored result.
"""
from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.utils.text import get_valid_filename

from algorithms.context import Scratch
from algorithms.models import Artifact

RESULT_NAME = "result"
_NOTHING = object()


class _SpooledFile(File):
    """A finished local file; ``temporary_file_path`` lets FileSystemStorage move it instead of copying."""

    def temporary_file_path(self) -> str:
        return str(self.name)


class ArtifactWriter(io.BufferedIOBase):
    """Binary write-only stream into storage; ``close()`` (or leaving ``with``) stores it."""

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

    def __del__(self) -> None:
        self.abort()  # a writer nobody closed is dropped, never stored half-written from a finalizer

    def abort(self) -> None:
        """Drop what was written (the algorithm failed half-way)."""
        if not self.closed:
            self._file.close()
            self._path.unlink(missing_ok=True)
            super().close()


class ArtifactStore:
    """Artifacts of one attempt of one task."""

    def __init__(self, *, task_id: str, attempt: int, scratch: Scratch) -> None:
        self.task_id, self.attempt, self._scratch = task_id, attempt, scratch
        self._open: list[ArtifactWriter] = []
        self.result: Artifact | None = None

    @property
    def scratch_dir(self) -> Path:
        return self._scratch.path

    def open(self, name: str, mode: str = "wb", *, content_type: str | None = None,
             summary: dict[str, Any] | None = None, kind: str = Artifact.Kind.FILE) -> Any:
        if mode not in {"w", "wb", "wt"}:
            raise ValueError("artifacts are write-only: mode 'wb' (bytes) or 'w' (text, UTF-8)")
        clean = get_valid_filename(os.path.basename(name)) if kind == Artifact.Kind.FILE else RESULT_NAME
        if not clean:
            raise ValueError(f"invalid artifact name {name!r}")
        guessed = mimetypes.guess_type(clean)[0] or ("text/plain" if mode != "wb" else "application/octet-stream")
        writer = ArtifactWriter(self, kind=kind, name=clean, content_type=content_type or guessed, summary=summary)
        self._open.append(writer)
        return writer if mode == "wb" else io.TextIOWrapper(writer, encoding="utf-8", write_through=True)

    def add_file(self, path: Path, *, name: str | None = None, content_type: str | None = None) -> Artifact:
        """Store an existing local file (an external program's output) as an artifact, streamed."""
        with open(path, "rb") as src, self.open(name or path.name, "wb", content_type=content_type) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        assert dst.artifact is not None
        return dst.artifact

    def commit(self, writer: ArtifactWriter, path: Path, sha256: str) -> Artifact:
        storage_name = default_storage.save(
            f"tasks/{self.task_id}/{self.attempt}/{writer.kind}-{writer.name}", _SpooledFile(open(path, "rb"), name=str(path)))
        previous = Artifact.objects.filter(task_id=self.task_id, kind=writer.kind, name=writer.name).first()
        if previous is not None:  # the same name written again, or left by an earlier attempt
            delete_file(previous)
            previous.delete()
        artifact = Artifact.objects.create(
            task_id=self.task_id, kind=writer.kind, name=writer.name, storage_name=storage_name, size=writer.size,
            sha256=sha256, content_type=writer.content_type, summary=writer.summary, attempt=self.attempt)
        if writer.kind == Artifact.Kind.RESULT:
            self.result = artifact
        return artifact

    def close_open(self) -> None:
        """The algorithm returned: store what it left open."""
        for writer in self._open:
            writer.close()

    def abort_open(self) -> None:
        for writer in self._open:
            writer.abort()


def delete_file(artifact: Artifact) -> None:
    if artifact.storage_name:
        default_storage.delete(artifact.storage_name)


def discard_earlier_attempts(*, task_id: str, attempt: int) -> None:
    """A retry starts clean: what a failed attempt stored is not this attempt's output."""
    for artifact in Artifact.objects.filter(task_id=task_id, attempt__lt=attempt):
        delete_file(artifact)
        artifact.delete()


def summarize(obj: Any) -> dict[str, Any]:
    """A few words about a JSON value, small enough for the task detail."""
    if isinstance(obj, dict):
        return {"type": "object", "keys": list(obj)[:20], "length": len(obj)}
    if isinstance(obj, list):
        return {"type": "array", "length": len(obj)}
    return {"type": type(obj).__name__}


def finalize_result(store: ArtifactStore, obj: Any) -> Any:
    """The value for ``Task.result``: ``obj`` itself when its JSON fits inline, else None with ``obj``
    encoded chunk by chunk into a stored result. A result streamed with ``ctx.open_result()`` wins."""
    if store.result is not None or obj is None:
        return None if store.result is not None else obj
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
        return obj
    with store.open(RESULT_NAME, "w", content_type="application/json", summary=summarize(obj),
                    kind=Artifact.Kind.RESULT) as out:
        out.write("".join(head))
        del head
        for chunk in chunks:
            out.write(chunk)
    return None
