"""The LOGITSTORE_* settings of the storage layer, read from the environment and checked."""

from __future__ import annotations

import math
import os

from logitstore.errors import StoreError

LEASE_SECONDS_ENV = "LOGITSTORE_LEASE_SECONDS"  # how long a writer's lease on object storage lasts
RETRY_SECONDS_ENV = "LOGITSTORE_OBJECT_RETRY_SECONDS"  # how long one request is retried before it is an error
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_RETRY_SECONDS = 60.0  # obstore's own default is 3 minutes
_RANGES = {LEASE_SECONDS_ENV: (1.0, 86400.0), RETRY_SECONDS_ENV: (0.1, 3600.0)}


def _seconds(env: str, default: float) -> float:
    text = os.environ.get(env, "")
    if not text.strip():
        return default
    low, high = _RANGES[env]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise StoreError(f"{env}={text!r} is not a number of seconds in [{low:g}, {high:g}]: fix or unset it")
    return value


def lease_seconds() -> float:
    return _seconds(LEASE_SECONDS_ENV, DEFAULT_LEASE_SECONDS)


def retry_seconds() -> float:
    return _seconds(RETRY_SECONDS_ENV, DEFAULT_RETRY_SECONDS)


def problems() -> list[str]:
    """Every LOGITSTORE_* storage setting that is set wrong (for a job's up-front checks)."""
    out = []
    for read in (lease_seconds, retry_seconds):
        try:
            read()
        except StoreError as exc:
            out.append(str(exc))
    return out
