"""Remote algorithm services: algorithms that run in another process, language or machine.

* ``proto/``        the gRPC contract and its stubs (generated, never committed)
* ``wire.py``       the WebSocket + MsgPack frame format (shared with ``examples/ws_service``)
* ``client.py``     what the bridge needs from a service, backend-neutral; ``client_for(service)``
* ``grpc_client.py``, ``ws_client.py``   the two backends
* ``discovery.py``  the services file, scheme discovery (cached in ``RemoteService.schemes``), health
* ``schemes.py``    remote schemes as registry algorithms (``backend`` "grpc" / "ws", JSON Schema params)
* ``bridge.py``     the worker side: submit or re-attach, progress, cancel, streamed result
See docs/remote.md.
"""
