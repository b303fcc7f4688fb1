"""Where the CLI keeps the server URL and tokens: ``$CONVEYOR_CONFIG_DIR`` or the user's config dir
(``$XDG_CONFIG_HOME/conveyor``, else ``~/.config/conveyor``), file ``config.json``, mode 0600."""
from __future__ import annotations

import json
import os
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
    tmp = path.with_suffix(".tmp")
    # The file holds a refresh token: readable by its owner only, written atomically.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)
