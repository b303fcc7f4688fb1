"""Streaming a stored result or artifact to a client: HTTP Range, optional zstd, flat memory.

Under ASGI (daphne) Django drains a *synchronous* streaming iterator into a list before sending it,
which for a 1 GiB file means 1 GiB in the web process; so there the chunks come from an async
iterator that reads the file in a worker thread, one chunk at a time. Under WSGI (and the test
client) a plain generator is used.
"""
from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any

from asgiref.sync import sync_to_async
from django.core.files.storage import default_storage
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework.renderers import BaseRenderer, JSONRenderer

from algorithms.models import Artifact
from algorithms.results import ResultExpired
from config.errors import ConveyorError

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(ConveyorError):
    status_code = 416
    code = "range_not_satisfiable"


class AnyMediaRenderer(BaseRenderer):
    """Lets download endpoints accept any ``Accept`` header; errors still render as JSON."""

    media_type = "*/*"
    format = "bin"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return JSONRenderer().render(data)


DOWNLOAD_RENDERERS = [JSONRenderer, AnyMediaRenderer]


def _error(code: str, message: str, description: str) -> OpenApiResponse:
    from config.schema import ErrorOut

    return OpenApiResponse(ErrorOut, description=description, examples=[
        OpenApiExample(code, value={"error": {"code": code, "message": message}})])


# OpenAPI for a stored file: its own content type (application/octet-stream for a blob, application/json
# for a large JSON result, text/plain for a log…), whole or one Range.
SCHEMA_RESPONSES: dict[Any, Any] = {
    (200, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description="The stored bytes, streamed (zstd on request)."),
    (206, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description="The requested `Range` of the stored bytes."),
    410: _error("result_expired", "result expired on 2026-12-23 and was deleted",
                "Retention deleted the bytes; the task keeps size, sha256 and summary."),
    416: _error("range_not_satisfiable", "range 'bytes=5000-' is outside the 1024 bytes of this file",
                "The `Range` lies outside the file."),
}


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` → inclusive (start, end); None for no or a multi range."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # multiple ranges or another unit: RFC 9110 lets us answer with the whole file
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"range {header!r} is outside the {size} bytes of this file")
    return start, end


def _read(fh: IO[bytes], length: int) -> Iterator[bytes]:
    try:
        while length > 0:
            chunk = fh.read(min(CHUNK, length))
            if not chunk:
                break
            length -= len(chunk)
            yield chunk
    finally:
        fh.close()


def _zstd(chunks: Iterator[bytes]) -> Iterator[bytes]:
    import zstandard

    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


async def _async(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    done = object()
    pull = sync_to_async(next, thread_sensitive=False)
    try:
        while (chunk := await pull(chunks, done)) is not done:
            yield chunk  # type: ignore[misc]
    finally:
        chunks.close()  # type: ignore[attr-defined]


def wants_zstd(request: HttpRequest) -> bool:
    """``Accept-Encoding`` names zstd with a q-value above 0."""
    for part in request.headers.get("Accept-Encoding", "").split(","):
        coding, *options = [p.strip() for p in part.split(";")]
        if coding.lower() != "zstd":
            continue
        q = next((o[2:] for o in options if o.lower().startswith("q=")), "1")
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False


def serve(request: HttpRequest, artifact: Artifact, *, filename: str) -> StreamingHttpResponse:
    """The artifact's bytes: 200, or 206 for a Range; 410 once retention deleted them."""
    if artifact.expired or not artifact.storage_name:
        raise ResultExpired(f"{filename} expired on {artifact.expired_at:%Y-%m-%d} and was deleted"
                            if artifact.expired_at else f"{filename} is no longer stored")
    size = artifact.size
    span = parse_range(request.headers.get("Range"), size)
    if span is not None and request.headers.get("If-Range") not in (None, f'"{artifact.sha256}"'):
        span = None
    start, end = span or (0, size - 1)
    try:
        fh = default_storage.open(artifact.storage_name, "rb")
    except FileNotFoundError:  # deleted behind the row's back (an operator cleaning storage by hand)
        raise ResultExpired(f"{filename} is no longer in storage") from None
    if start:
        fh.seek(start)
    chunks = _read(fh, end - start + 1)
    compress = span is None and wants_zstd(request)
    if compress:
        chunks = _zstd(chunks)
    raw_request = getattr(request, "_request", request)
    content = _async(chunks) if isinstance(raw_request, ASGIRequest) else chunks
    response = StreamingHttpResponse(content, status=206 if span else 200, content_type=artifact.content_type)
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = f'"{artifact.sha256}"'
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Vary"] = "Accept-Encoding"
    if compress:
        response["Content-Encoding"] = "zstd"
    else:
        response["Content-Length"] = str(end - start + 1)
    if span:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response
