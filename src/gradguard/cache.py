"""Where gradguard keeps files it derives (de-quantized models, review queues)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The user cache folder: ``$GRADGUARD_CACHE``, else ``$XDG_CACHE_HOME/gradguard``, else ``~/.cache/gradguard``."""
    explicit = os.environ.get("GRADGUARD_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gradguard"
