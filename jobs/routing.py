"""WebSocket routes (the consumers live in jobs/consumers.py).

A task id that is not a UUID reaches the consumer, which closes with 4403 as for a task that does not
exist; any other path is refused at the handshake (HTTP 403). Channels' router would raise "No route
found" for either: an HTTP 500 at the handshake and a traceback in the web log.
"""
from __future__ import annotations

from channels.security.websocket import WebsocketDenier
from django.urls import path, re_path

from jobs import consumers

websocket_urlpatterns: list = [
    path("ws/tasks/<str:task_id>/", consumers.TaskConsumer.as_asgi()),
    path("ws/dashboard/", consumers.DashboardConsumer.as_asgi()),
    re_path(r"", WebsocketDenier.as_asgi()),
]
