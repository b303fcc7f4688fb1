"""The signing key of a local stack (README, "Quick start"), when ``SECRET_KEY`` is not set.

``SECRET_KEY`` signs sessions, CSRF tokens and JWTs, so it is never a constant in the source: anyone who
could read the source could sign an admin's token for any instance that used it. Instead, with
``CONVEYOR_DEV`` (``make run`` sets it) or ``DEBUG`` on and no ``SECRET_KEY``, settings take a random key
made once per data folder: ``<data folder>/secret_key`` (``.conveyor/`` unless ``CONVEYOR_DATA_DIR``
says otherwise), mode 0600. Every later process on that folder reads the same file (web, worker, beat,
a shell that sourced ``.conveyor/env``), so logins and tokens survive a restart; deleting the file makes
a new key on the next start, which signs everyone out.

Used by config/settings.py and scripts/run_local.py (which makes the key before it starts anything).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

KEY_FILE = "secret_key"


def dev_data_dir() -> Path:
    """``make run``'s data folder: ``CONVEYOR_DATA_DIR`` (relative to the working folder, as for
    ``make run``), else ``.conveyor/`` in the repository."""
    return Path(os.environ.get("CONVEYOR_DATA_DIR") or Path(__file__).resolve().parent.parent / ".conveyor").resolve()


def dev_secret_key(data_dir: Path) -> str:
    """The key kept in ``data_dir``; made (random, mode 0600) when there is none yet. Processes starting
    at the same moment on a new folder agree on one: the file appears complete, once, and is never
    replaced."""
    path = data_dir / KEY_FILE
    try:
        if not path.exists():
            _create(path)
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"SECRET_KEY is not set, and the local stack's key {path} could not be read or made "
            f"({exc.strerror or exc}); set SECRET_KEY, or CONVEYOR_DATA_DIR to a folder this user can write"
        ) from None
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: delete it (the next start makes a new key, which signs "
                                   f"everyone out) or set SECRET_KEY")
    return key


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(50) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(partial, path)  # fails if another process made it first: theirs is the key
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: a rename, which a racing process may win
            if not path.exists():
                os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
