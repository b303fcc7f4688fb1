"""Frames of the WebSocket + MsgPack backend (shared by Conveyor and ``examples/ws_service``; no Django).

A frame is one binary WebSocket message: a one-byte header, then a MsgPack map. Header ``0x00``:
plain MsgPack; ``0x01``: Zstandard-compressed MsgPack (above ``COMPRESS_OVER`` bytes, when ``zstandard``
is installed and a 64 KiB probe shrinks by 10 %). NumPy arrays travel as MsgPack extension type 1
holding ``[dtype.str, shape, raw bytes]``: float64 stays bit-exact, byte order included.

Requests carry an integer ``id`` that the answer repeats, so many tasks share one socket:
``{"id", "op": "schemes" | "submit" | "watch" | "cancel" | "read" | "ping", ...}`` → ``{"id", "ok": true, ...}``
or ``{"id", "ok": false, "code", "error"}``; a ``watch`` answers with several ``{"id", "progress": {...}}``
frames, the last one in a final state. See docs/remote.md for every field.
"""
from __future__ import annotations

from typing import Any

import msgpack

try:
    import zstandard
except ImportError:  # optional: frames are then never compressed (and compressed ones cannot be read)
    zstandard = None

NDARRAY = 1
COMPRESS_OVER = 64 * 1024
PROBE = 64 * 1024
PLAIN, ZSTD = b"\x00", b"\x01"


def _default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return msgpack.ExtType(NDARRAY, msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()],
                                                      use_bin_type=True))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot pack {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == NDARRAY:
        import numpy as np

        dtype, shape, raw = msgpack.unpackb(data, raw=False)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    return msgpack.ExtType(code, data)


def pack(obj: Any, *, compress_over: int | None = COMPRESS_OVER) -> bytes:
    payload = msgpack.packb(obj, default=_default, use_bin_type=True)
    if zstandard is not None and compress_over is not None and len(payload) > compress_over:
        zstd = zstandard.ZstdCompressor(level=1)
        # Probe the middle 64 KiB first: incompressible data (random float64) is sent as it is.
        mid = len(payload) // 2
        if len(zstd.compress(payload[mid:mid + PROBE])) < 0.9 * min(PROBE, len(payload) - mid):
            return ZSTD + zstd.compress(payload)
    return PLAIN + payload


def unpack(frame: bytes) -> Any:
    header, payload = frame[:1], frame[1:]
    if header == ZSTD:
        if zstandard is None:
            raise ValueError("a zstd-compressed frame arrived but zstandard is not installed")
        payload = zstandard.ZstdDecompressor().decompress(payload)
    elif header != PLAIN:
        raise ValueError(f"unknown frame header {header!r}")
    return msgpack.unpackb(payload, raw=False, ext_hook=_ext_hook, strict_map_key=False)


def jsonable(obj: Any) -> Any:
    """For task results and metrics: arrays become lists of Python floats (repr round-trips float64
    exactly, so the JSON text loses nothing); bytes become lists of ints."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (bytes, bytearray)):
        return list(obj)
    return obj
