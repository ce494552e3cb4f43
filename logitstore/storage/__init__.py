"""Where stores and run outputs live: one storage contract (logitstore/storage/base.py), a local
directory (local.py) and object storage (objects.py, lease.py) beneath it, and `open_storage`.

    storage = open_storage("stores/digits")          # or "s3://bucket/stores/digits", "file:///..."
    storage.get("manifest.json")
"""

from __future__ import annotations

import os
from pathlib import Path

from logitstore.errors import StoreError
from logitstore.storage.base import (
    OBJECT_SCHEMES,
    Candidate,
    Exclusive,
    Guard,
    ObjectExistsError,
    Storage,
    is_object_uri,
    shard_name,
    uri_scheme,
)
from logitstore.storage.errors import ObjectPreconditionError, ObjectStoreRefusedError, StoreUnreachableError

MEMORY_SCHEME = "memory"  # memory://bucket/prefix: object storage held in this process (tests)


def local_path(location: str | os.PathLike) -> Path:
    """A local path, given as a path or a file:// URI; StoreError for any other scheme."""
    text = str(location)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    scheme = uri_scheme(text)
    if scheme:
        raise StoreError(
            f"{text}: the scheme {scheme}:// is not supported; use a local path, file://, "
            f"or one of {', '.join(s + '://' for s in OBJECT_SCHEMES)}"
        )
    return Path(text)


def open_storage(location: str | os.PathLike | Storage, *, follow_links: bool = False) -> Storage:
    """The storage at `location`: a local directory (a path or file://) or an object-storage prefix
    (s3://, gs://, az://; memory:// in this process only). A local directory never follows a
    symbolic link unless `follow_links` (a user's own inputs, never a store)."""
    if isinstance(location, Storage):
        return location
    if is_object_uri(location) or uri_scheme(str(location)) == MEMORY_SCHEME:
        from logitstore.storage.objects import ObjectStorage

        return ObjectStorage(str(location))
    from logitstore.storage.local import LocalStorage

    return LocalStorage(local_path(location), follow_links=follow_links)


__all__ = [
    "Candidate",
    "Exclusive",
    "Guard",
    "ObjectExistsError",
    "ObjectPreconditionError",
    "ObjectStoreRefusedError",
    "Storage",
    "StoreUnreachableError",
    "is_object_uri",
    "local_path",
    "open_storage",
    "shard_name",
]
