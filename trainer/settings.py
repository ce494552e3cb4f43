"""The LOGITSTORE_* settings a job reads from its environment, in one place, checked up front:
the storage layer's (LOGITSTORE_LEASE_SECONDS, LOGITSTORE_OBJECT_RETRY_SECONDS) and the cache's.
Light on purpose (no torch, no Ray): the jobs' configs check them before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

from logitstore.storage import settings as storage_settings

CACHE_ENV = "LOGITSTORE_CACHE"  # trained built-in teachers, copies of models on object storage


def cache_dir() -> Path:
    """Where this machine caches what it trains or copies: $LOGITSTORE_CACHE, else ~/.cache/logitstore
    (never a disk shared between machines: each node keeps its own)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "logitstore")


def problems() -> list[str]:
    """Every LOGITSTORE_* setting that is set wrong, each as one line naming it and the fix."""
    out = storage_settings.problems()
    cache = os.environ.get(CACHE_ENV, "")
    if cache and Path(cache).exists() and not Path(cache).is_dir():
        out.append(f"{CACHE_ENV}={cache} is a file, not a directory: point it at a directory, or unset it")
    return out
