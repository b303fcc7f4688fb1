"""Streaming a stored result or artifact to a client: HTTP Range, optional zstd, flat memory.

Under ASGI (daphne) Django drains a *synchronous* streaming iterator into a list before sending it,
which for a 1 GiB file means 1 GiB in the web process; so there the chunks come from an async
iterator that reads the file in a worker thread, one chunk at a time. Under WSGI (and the test
client) a plain generator is used.
"""
from __future__ import annotations

import mimetypes
import re
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.core.files.storage import default_storage
from django.db import connection
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponseNotModified, StreamingHttpResponse
from django.utils.http import http_date, parse_etags
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from algorithms.artifacts import valid_content_type
from algorithms.models import Artifact
from algorithms.results import ResultExpired
from algorithms.storage import open_span
from config.errors import ConveyorError

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_PAST_ANY_END = 10**19  # bigger than any file (and than PostgreSQL's bigint)


class RangeNotSatisfiable(ConveyorError):
    status_code = 416
    code = "range_not_satisfiable"


class AnyMediaRenderer(BaseRenderer):
    """Lets download endpoints accept any ``Accept`` header; errors still render as JSON, and say so
    (DRF would label them with this renderer's ``*/*``)."""

    media_type = "*/*"
    format = "bin"
    charset = None

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        response = (renderer_context or {}).get("response")
        if response is not None:
            response["Content-Type"] = JSONRenderer.media_type
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
    304: OpenApiResponse(description="`If-None-Match` names these bytes' `ETag` (their sha256): no body."),
    410: _error("result_expired", "result expired on 2026-12-23 and was deleted",
                "Retention deleted the bytes; the task keeps size, sha256 and summary."),
    416: _error("range_not_satisfiable", "range 'bytes=5000-' is outside the 1024 bytes of this file",
                "The `Range` lies outside the file."),
}


def _position(digits: str) -> int:
    """A byte position of a Range; any number past what a file can hold counts as "past the end"."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else _PAST_ANY_END


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` → inclusive (start, end); None for no, a multi or an
    invalid range (``b`` < ``a``), which RFC 9110 lets us answer with the whole file."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # multiple ranges or another unit
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        start, end = max(0, size - _position(last)), size - 1
    else:
        start = _position(first)
        if last and _position(last) < start:
            return None
        end = min(_position(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"range {header[:100]!r} is outside the {size} bytes of this file")
    return start, end


def extension(content_type: str) -> str:
    """The file extension of a content type (``.json``, ``.bin``, ``.csv``; "" when none is known), so a
    result saved by its ``Content-Disposition`` name opens as what it is."""
    return mimetypes.guess_extension(content_type.split(";")[0].strip().lower(), strict=False) or ""


def content_disposition(filename: str) -> str:
    """``attachment`` with ``filename`` as is when it is plain ASCII, else an ASCII stand-in and the real
    name in ``filename*`` (RFC 6266)."""
    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", filename)
    if fallback == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


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


def _unsatisfiable(exc: RangeNotSatisfiable, size: int) -> Response:
    """416 in the usual error body, with the ``Content-Range: bytes */size`` that RFC 9110 asks for."""
    return Response({"error": {"code": exc.code, "message": exc.message}}, status=exc.status_code,
                    headers={"Content-Range": f"bytes */{size}"})


def _has_already(request: HttpRequest, etag: str) -> bool:
    """``If-None-Match`` names this content (``*``, or its tag, compared weakly as RFC 9110 says)."""
    given = request.headers.get("If-None-Match")
    if not given:
        return False
    tags = parse_etags(given)
    return "*" in tags or etag.removeprefix("W/") in (tag.removeprefix("W/") for tag in tags)


def zstd_etag(sha256: str) -> str:
    """The validator of the zstd-compressed whole file: another representation, so another tag (a client
    resuming a compressed download with the plain file's tag got plain bytes to append to compressed
    ones), and weak, so that ``If-Range`` (strong comparison only) never splices into it."""
    return f'W/"{sha256}-zstd"'


def serve(request: HttpRequest, artifact: Artifact, *, filename: str) -> StreamingHttpResponse | HttpResponseNotModified | Response:
    """The artifact's bytes: 200, or 206 for a Range (416 outside the file); 304 when ``If-None-Match`` names
    them; 410 once retention deleted them."""
    if artifact.expired or not artifact.storage_name:
        raise ResultExpired(f"{filename} expired on {artifact.expired_at:%Y-%m-%d} and was deleted"
                            if artifact.expired_at else f"{filename} is no longer stored")
    etag = f'"{artifact.sha256}"'
    size = artifact.size
    current = request.headers.get("If-Range") in (None, etag)  # else the whole file
    unsatisfiable = None
    try:
        span = parse_range(request.headers.get("Range") if current else None, size)
    except RangeNotSatisfiable as exc:
        span, unsatisfiable = None, exc
    compress = span is None and unsatisfiable is None and wants_zstd(request)
    representation = zstd_etag(artifact.sha256) if compress else etag
    if _has_already(request, representation):  # before the Range, as RFC 9110 orders the preconditions
        not_modified = HttpResponseNotModified()
        not_modified["ETag"] = representation
        not_modified["Vary"] = "Accept-Encoding"  # two representations: a shared cache must keep them apart
        return not_modified
    if unsatisfiable is not None:
        return _unsatisfiable(unsatisfiable, size)
    start, end = span or (0, size - 1)
    try:
        fh = open_span(default_storage, artifact.storage_name, start, end)
    except FileNotFoundError:  # deleted behind the row's back (an operator cleaning storage by hand)
        raise ResultExpired(f"{filename} is no longer in storage") from None
    chunks = _read(fh, end - start + 1)
    if compress:
        chunks = _zstd(chunks)
    raw_request = getattr(request, "_request", request)
    content = chunks
    if isinstance(raw_request, ASGIRequest):
        content = _async(chunks)
        # The bytes go out for as long as the client takes to read them, through the storage's own reads:
        # the request's database connection goes back now (to DB_POOL_MAX_SIZE's pool, or closed), not
        # after the last byte. Held, slow downloads took the whole pool: every other request waited for
        # DB_POOL_TIMEOUT and got a 503 (and with no pool each held a PostgreSQL session of its own).
        if not connection.in_atomic_block:
            connection.close()
    response = StreamingHttpResponse(content, status=206 if span else 200,
                                     content_type=valid_content_type(artifact.content_type) or "application/octet-stream")
    response["Accept-Ranges"] = "none" if compress else "bytes"  # ranges are of the plain bytes only
    response["ETag"] = representation
    response["Content-Disposition"] = content_disposition(filename)
    response["Last-Modified"] = http_date(artifact.created_at.timestamp())
    response["Vary"] = "Accept-Encoding"
    if compress:
        response["Content-Encoding"] = "zstd"
    else:
        response["Content-Length"] = str(end - start + 1)
    if span:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response
