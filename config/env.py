"""Reading settings from the environment: each helper returns the variable's value as its type, or
raises ``ImproperlyConfigured`` naming the variable, the bad value and what it should be, so a
malformed value stops the process at start with that one line (README, "Configuration").

Used by config/settings.py and by config/celery.py (beat's intervals, read before Django's settings).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from django.core.exceptions import ImproperlyConfigured


def one_line_configuration_errors() -> None:
    """A configuration error that reaches the top of the process (manage.py, daphne importing config.asgi,
    a Celery worker or beat importing config.celery) is printed as ``error: <its message>``, one line on
    stderr, not a 60-line traceback whose last line is the message; the process still exits with 1.
    Anything else keeps Python's traceback."""
    previous = sys.excepthook
    if getattr(previous, "one_line_configuration_errors", False):
        return  # installed already (config.celery is imported by every entry point)

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if isinstance(exc, ImproperlyConfigured):
            print(f"error: {exc}", file=sys.stderr, flush=True)
        else:
            previous(kind, exc, tb)

    hook.one_line_configuration_errors = True  # type: ignore[attr-defined]
    sys.excepthook = hook


@contextlib.contextmanager
def configuration_errors_exit() -> Iterator[None]:
    """Around settings read while Celery's command line loads the app (``celery -A config worker``): it
    catches every ``Exception`` there and prints "Unable to load celery application" with the traceback,
    exit status 2, before the hook of ``one_line_configuration_errors`` could see it. A configuration
    error leaves as ``SystemExit`` instead, which it lets through: ``error: <message>``, exit status 1."""
    try:
        yield
    except ImproperlyConfigured as exc:
        raise SystemExit(f"error: {exc}") from None


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise ImproperlyConfigured(f"environment variable {name} is required")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true/false)")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """A whole number, ``minimum`` or more (no setting here means anything below 0)."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None
    return _at_least(name, value, number, minimum)


def env_float(name: str, default: float, *, positive: bool = False) -> float:
    """A finite number, 0 or more; with ``positive``, more than 0 (an interval that 0 would turn into a
    busy loop: a heartbeat, a ping, a beat tick)."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ImproperlyConfigured(f"{name}={value!r} is not a finite number")
    if positive and number <= 0:
        raise ImproperlyConfigured(f"{name}={value!r} must be more than 0")
    return _at_least(name, value, number, 0)


def _at_least(name: str, value: str, number: Any, minimum: int) -> Any:
    if number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} must be {minimum} or more")
    return number


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default or " ").split(",") if item.strip()]


def env_networks(name: str, default: str = "") -> list[str]:
    """Comma-separated CIDRs (``127.0.0.0/8,::1/128``); a bare address is its own /32 or /128."""
    import ipaddress

    out = []
    for item in env_list(name, default):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ImproperlyConfigured(f"{name}={os.environ.get(name)!r}: {item!r} is not a CIDR "
                                       "(e.g. 10.0.0.0/8,fd00::/8)") from None
    return out


def env_floats(name: str, default: str) -> list[float]:
    """Comma-separated finite numbers, each more than 0, at least one (``5,30,120``): delays, which 0 or
    less would turn into a loop as fast as it can go."""
    try:
        values = [float(item) for item in env_list(name, default)]
    except ValueError:
        values = []
    if not all(math.isfinite(value) and value > 0 for value in values):
        raise ImproperlyConfigured(f"{name}={os.environ.get(name)!r}: each number must be finite and more than 0")
    if not values:
        raise ImproperlyConfigured(f"{name}={os.environ.get(name)!r} is not a comma-separated list of numbers "
                                   f"(e.g. {default})")
    return values


def env_sizes(name: str) -> dict[str, int]:
    """Comma-separated ``name:size`` pairs with a whole-number size (``fast:8,bench:8``)."""
    sizes: dict[str, int] = {}
    for item in env_list(name, ""):
        key, _, size = (part.strip() for part in item.partition(":"))
        if not (key and size.isascii() and size.isdigit()):
            raise ImproperlyConfigured(f"{name}={os.environ.get(name)!r}: {item!r} is not name:size "
                                       "(e.g. fast:8,bench:8)")
        sizes[key] = int(size)
    return sizes


def env_json_object(name: str, default: str = "{}") -> dict[str, Any]:
    """A JSON object. The value is not repeated in the error: it may hold credentials (S3 keys)."""
    try:
        value = json.loads(env_str(name, default))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON ({exc}); expected an object, "
                                   'e.g. {"bucket_name": "…"}') from None
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{name} is JSON but not an object; expected e.g. {{\"bucket_name\": \"…\"}}")
    return value


def env_choice(name: str, default: str, choices: list[str]) -> str:
    value = env_str(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value
