"""WebSocket routes (the consumers live in jobs/consumers.py)."""
from __future__ import annotations

from django.urls import path

from jobs import consumers

websocket_urlpatterns: list = [
    path("ws/tasks/<uuid:task_id>/", consumers.TaskConsumer.as_asgi()),
    path("ws/dashboard/", consumers.DashboardConsumer.as_asgi()),
]
