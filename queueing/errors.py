from __future__ import annotations

from config.errors import Conflict, InvalidInput, NotFound


class QueueNotFound(NotFound):
    code = "queue_not_found"


class WorkerNotFound(NotFound):
    code = "worker_not_found"


class NotWaiting(Conflict):
    """A reorder named a task that has already left the queue (QUEUED, RUNNING or final)."""

    code = "not_waiting"


class InvalidReorder(InvalidInput):
    code = "invalid_reorder"
