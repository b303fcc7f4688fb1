from __future__ import annotations

from config.errors import Conflict, NotFound


class TaskNotFound(NotFound):
    code = "task_not_found"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class NoResult(Conflict):
    code = "no_result"
