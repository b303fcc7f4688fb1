"""The gRPC contract (``algorithm.proto``) and its generated stubs.

The stubs are not committed: ``make install`` runs ``python -m algorithms.remote.proto``, and
``load()`` generates them on first use when they are missing or older than the ``.proto`` (a fresh
checkout, an edited contract). They land in ``algorithms/remote/_generated/`` (git-ignored). Plain
Python, no Django: the reference services under ``examples/`` import it too.
"""
from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).with_name("algorithm.proto")
OUT = Path(__file__).resolve().parent.parent / "_generated"

_loaded: tuple[ModuleType, ModuleType] | None = None


def _stale() -> bool:
    stub = OUT / "algorithm_pb2_grpc.py"
    return not stub.exists() or stub.stat().st_mtime < PROTO.stat().st_mtime


def generate() -> Path:
    """Run grpcio-tools' protoc; files are renamed into place so concurrent imports never see half a file."""
    from grpc_tools import protoc

    OUT.mkdir(exist_ok=True)
    (OUT / "__init__.py").touch()
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        argv = ["protoc", f"-I{PROTO.parent}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", str(PROTO)]
        if protoc.main(argv) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        grpc_stub = Path(tmp, "algorithm_pb2_grpc.py")
        # protoc writes a top-level import; the stubs live in a package.
        grpc_stub.write_text(grpc_stub.read_text().replace("import algorithm_pb2 as", "from . import algorithm_pb2 as"))
        for name in ("algorithm_pb2.py", "algorithm_pb2_grpc.py"):  # the _grpc module last: _stale() checks it
            os.replace(Path(tmp, name), OUT / name)
    return OUT


def load() -> tuple[ModuleType, ModuleType]:
    """``(algorithm_pb2, algorithm_pb2_grpc)``, generated first if needed."""
    global _loaded
    if _loaded is None:
        if _stale():
            generate()
        pb2 = importlib.import_module("algorithms.remote._generated.algorithm_pb2")
        pb2_grpc = importlib.import_module("algorithms.remote._generated.algorithm_pb2_grpc")
        _loaded = (pb2, pb2_grpc)
    return _loaded
