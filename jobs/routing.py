"""WebSocket routes (the consumers live in jobs/consumers.py)."""
from __future__ import annotations

websocket_urlpatterns: list = []
