"""Structured logs: one JSON object per line from web and worker, each with ``request_id``, ``task_id``
and ``user`` (null where they do not apply), secrets redacted.

Every stdlib logger (Django, Celery, ours) goes through structlog's ``ProcessorFormatter``, so a plain
``logging.getLogger(__name__).info(...)`` gets the same fields as ``structlog.get_logger()``. The request
middleware and the Celery signal handlers bind the fields in context variables.
This module is imported by ``config/settings.py``: no Django imports at the top.
"""
from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from typing import Any

import structlog
from django.utils.functional import SimpleLazyObject, empty

CONTEXT_KEYS = ("request_id", "task_id", "user")
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization|api[-_]?key|cookie|signature", re.I)
_SECRET_VALUES = [
    (re.compile(r"(Bearer|Api-Key)\s+[A-Za-z0-9._~+/=-]+", re.I), r"\1 [redacted]"),
    (re.compile(r"cvk_[0-9a-f]{8}_[A-Za-z0-9_-]+"), "cvk_[redacted]"),
    # Passwords in URLs, up to the last "@" before the host (a password may hold "@"), with or without a
    # user name (redis://:password@host).
    (re.compile(r"(://[^:/@\s]*:)[^/\s\"'<>]*@"), r"\1[redacted]@"),
]


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        for pattern, replacement in _SECRET_VALUES:
            value = pattern.sub(replacement, value)
    return value


def redact(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """No secrets in logs: drop values of secret-looking keys, mask tokens and URL passwords in text."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key) and key not in CONTEXT_KEYS:
            event_dict[key] = "[redacted]"
        else:
            event_dict[key] = _redact_value(value)
    return event_dict


# The request being served in this context (set by observability.middleware): the user is known only
# once DRF has authenticated it, after the middleware ran, so it is read when a line is written.
current_request: ContextVar[Any] = ContextVar("conveyor_request", default=None)


def current_request_id() -> str | None:
    return structlog.contextvars.get_contextvars().get("request_id")


def about_task(task_id: Any) -> Any:
    """Log lines written inside carry ``task_id``: for a thread that serves many tasks (the watchdog, the
    heartbeat's stuck-task check), whose context names none."""
    return structlog.contextvars.bound_contextvars(task_id=str(task_id))


def _username(request: Any) -> str | None:
    user = request.__dict__.get("user")  # DRF stores the authenticated user here; Django a lazy object
    if user is None or (isinstance(user, SimpleLazyObject) and user._wrapped is empty):
        return None
    return user.get_username() if getattr(user, "is_authenticated", False) else None


def add_context_keys(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in CONTEXT_KEYS:
        event_dict.setdefault(key, None)
    request = current_request.get()
    if event_dict["user"] is None and request is not None:
        event_dict["user"] = _username(request)
    return event_dict


SHARED = [
    structlog.contextvars.merge_contextvars,
    add_context_keys,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ExtraAdder(),
]


def logging_config(*, level: str, fmt: str) -> dict[str, Any]:
    """The ``LOGGING`` dict; ``fmt`` is ``json`` (default, for machines) or ``console`` (for people)."""
    if fmt not in {"json", "console"}:
        raise ValueError(f"LOG_FORMAT={fmt!r}: use json or console")
    # Python warnings (whitenoise's "No directory at: …/staticfiles/" when static files are served from
    # the finders without collectstatic, deprecations) go through logging as ``py.warnings`` lines
    # instead of raw text on stderr, in the middle of the JSON stream.
    logging.captureWarnings(True)
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[*SHARED, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": SHARED,
                "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                               structlog.processors.format_exc_info, redact, renderer],
            },
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            # django.server / daphne access lines repeat what observability.middleware logs with more fields
            "django.server": {"level": "WARNING"},
        },
    }
