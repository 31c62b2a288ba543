"""Where the harness keeps its cache (variants) and its results store."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "HARNESS_CACHE_DIR"
STORE_ENV = "HARNESS_STORE"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The variant cache: ``override``, else $HARNESS_CACHE_DIR, else ~/.cache/harness."""
    if override:
        return Path(override).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "harness").resolve()


def data_dir() -> Path:
    """The user's data dir for the results store: $XDG_DATA_HOME/harness or ~/.local/share/harness."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base, "harness").resolve()
