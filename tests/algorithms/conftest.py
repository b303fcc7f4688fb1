"""The download tests use ``live_web`` (tests/conftest.py): daphne serving ``config.asgi`` on loopback, on the
pytest database, so streamed results go through the ASGI path (async iterator + daphne backpressure) that
the in-process test client never takes."""
