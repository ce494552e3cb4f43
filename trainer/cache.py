"""Where trained built-in teachers are cached: $LOGITSTORE_CACHE, else ~/.cache/logitstore."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("LOGITSTORE_CACHE") or Path.home() / ".cache" / "logitstore")
