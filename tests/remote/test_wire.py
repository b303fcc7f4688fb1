"""The WebSocket + MsgPack frame format (pure unit tests)."""
from __future__ import annotations

import numpy as np

from algorithms.remote import wire


def test_float64_arrays_survive_a_frame_bit_for_bit():
    tricky = np.array([0.1, 1 / 3, 5e-324, -0.0, np.inf, -np.inf, np.nan, 1.7976931348623157e308])
    big_endian = np.arange(6, dtype=">f8").reshape(2, 3)

    back = wire.unpack(wire.pack({"a": tricky, "b": big_endian, "n": np.float64(2.5)}))

    assert back["a"].tobytes() == tricky.tobytes()
    assert back["b"].dtype == big_endian.dtype and back["b"].shape == (2, 3)
    assert back["b"].tobytes() == big_endian.tobytes()
    assert back["n"] == 2.5


def test_large_compressible_frames_are_zstd_and_random_ones_are_not():
    zeros = wire.pack({"data": np.zeros(100_000)})
    noise = wire.pack({"data": np.random.default_rng(1).standard_normal(100_000)})
    small = wire.pack({"data": np.zeros(10)})

    assert zeros[:1] == wire.ZSTD and len(zeros) < 10_000
    assert noise[:1] == wire.PLAIN and small[:1] == wire.PLAIN
    assert wire.unpack(zeros)["data"].tobytes() == np.zeros(100_000).tobytes()


def test_results_become_json_with_exact_floats():
    out = wire.jsonable({"values": np.array([0.1, 1 / 3]), "raw": b"\x01\x02"})

    assert out == {"values": [0.1, 1 / 3], "raw": [1, 2]}
    assert [float(repr(v)) for v in out["values"]] == out["values"]
