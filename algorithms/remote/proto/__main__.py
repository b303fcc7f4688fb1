"""``python -m algorithms.remote.proto``: (re)generate the gRPC stubs (run by ``make install``)."""
from algorithms.remote.proto import generate

print(f"gRPC stubs written to {generate()}")
