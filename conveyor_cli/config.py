"""Where the CLI keeps the server URL and tokens: ``$CONVEYOR_CONFIG_DIR`` or the user's config dir
(``$XDG_CONFIG_HOME/conveyor``, else ``~/.config/conveyor``), file ``config.json``, mode 0600."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def config_dir() -> Path:
    explicit = os.environ.get("CONVEYOR_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "conveyor"


def load() -> dict[str, Any]:
    path = config_dir() / "config.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save(data: dict[str, Any]) -> None:
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    # The file holds a refresh token: readable by its owner only (mkstemp makes it 0600), written
    # atomically through a temporary file of its own, so that two processes saving at once (a refresh
    # in one, a login in another) each replace the file whole instead of moving each other's half.
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
