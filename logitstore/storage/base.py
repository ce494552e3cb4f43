"""The storage contract: the few operations a store (and a run's outputs) need from where they live.

A `Storage` is a root: a local directory or an object-store prefix. Every name below it is a
relative POSIX path (`shards/00003.arrow`, `tokenizer/vocab.json`); a name never leaves the root
(no `..`, no absolute path, no empty segment). Two implementations pass one conformance suite
(logitstore/testing/storage_suite.py): `LocalStorage` (logitstore/storage/local.py) and
`ObjectStorage` (logitstore/storage/objects.py, over obstore: s3://, gs://, az://, and memory://
for tests). The store's protocol (logitstore/writer.py, reader.py) is written once over this
contract; what differs between a directory and a bucket is here, behind it:

- exclusive access: a `flock` that dies with its holder, or a lease renewed by compare-and-swap;
- a shard write: a temporary name renamed into place, or an object of its own with a marker;
- the commit: a create-only write (a hard link, or `If-None-Match: *`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from logitstore.errors import StoreError

OBJECT_SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss")
_URI = re.compile(r"^([a-z][a-z0-9+.-]*)://(.*)$")
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="logitstore-storage")


# What a writer keeps beside a store while it writes (FORMAT.md): its lock (a local directory),
# its lease (object storage), its partial writes (a local directory).
LOCK_NAME = ".lock"
LEASE_NAME = ".lease.json"
TMP_DIR = ".tmp"

# Shard names (FORMAT.md): one fixed name per shard in a directory; on object storage one name per
# write of a shard (an attempt: 12 hex digits), every shard one object (a Zarr group zipped).
SHARD_SUFFIX = {"zarr": ".zarr", "arrow": ".arrow"}
OBJECT_SUFFIX = {"zarr": ".zarr.zip", "arrow": ".arrow"}


def shard_name(index: int, backend: str, attempt: str | None = None) -> str:
    """Relative name of shard `index` (of one write of it, tagged `attempt`, on object storage)."""
    if attempt is None:
        return f"shards/{index:05d}{SHARD_SUFFIX[backend]}"
    return f"shards/{index:05d}.{attempt}{OBJECT_SUFFIX[backend]}"


class ObjectExistsError(StoreError):
    """A create-only write lost: another writer's object is already there."""


def uri_scheme(location: str) -> str | None:
    match = _URI.match(str(location))
    return match.group(1) if match else None


def is_object_uri(location: object) -> bool:
    """Whether `location` names object storage (s3://, gs://, az://...) rather than a local path."""
    return uri_scheme(str(location)) in OBJECT_SCHEMES


def check_name(name: str, uri: str) -> str:
    """`name` if it is a relative POSIX path that stays under the root; StoreError otherwise."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name or "\0" in name:
        raise StoreError(f"{name!r} is not a valid name inside {uri}: names are relative paths without '..'")
    return name


class Guard(Protocol):
    """What a writing task holds: `check()` before each write, raising when the writer it writes for
    no longer owns the store (a lease taken over by another dump). Picklable."""

    def check(self) -> None: ...


class Exclusive(ABC):
    """A writer's exclusive access to a storage: a context manager."""

    @abstractmethod
    def __enter__(self) -> Exclusive: ...

    @abstractmethod
    def __exit__(self, *exc) -> None: ...

    @abstractmethod
    def check(self) -> None:
        """Before a write of a shared file, a delete or a commit: raise LeaseLostError if another
        writer may own the store now."""

    @abstractmethod
    def confirm(self) -> None:
        """Immediately before the commit: prove ownership now (a lease is renewed), or raise."""

    @abstractmethod
    def guard(self) -> Guard | None:
        """What writing tasks in other processes check before each write (None: nothing to check)."""


@dataclass(frozen=True)
class Candidate:
    """A shard write found in a storage: its name and, when the write left one, its marker (the
    shard entry it was written as: the checksum and size it must have)."""

    name: str
    marker: dict[str, Any] | None = None


class Storage(ABC):
    """A root holding files or objects by relative name (see the module docstring)."""

    uri: str  # what messages show: the directory or the URI
    local_root: Path | None = None  # the directory, for a local storage

    def __repr__(self) -> str:
        return self.uri

    def __str__(self) -> str:
        return self.uri

    # ---- reading ----------------------------------------------------------------------------
    @abstractmethod
    def get(self, name: str) -> bytes:
        """The bytes of `name`; FileNotFoundError when there is none."""

    def get_many(self, names: Iterable[str]) -> dict[str, bytes]:
        names = list(names)
        return dict(zip(names, _POOL.map(self.get, names)))

    @abstractmethod
    def read_into(self, name: str, sink: Callable[[bytes], Any]) -> None:
        """Feed `name` to `sink` in pieces (a large file is never held whole); FileNotFoundError."""

    def download(self, name: str, path: Path) -> None:
        """Stream `name` to the local file `path` (never held in memory whole); FileNotFoundError."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            self.read_into(name, out.write)

    def download_many(self, targets: dict[str, Path]) -> None:
        """Several names to their files, concurrently."""
        list(_POOL.map(lambda item: self.download(*item), targets.items()))

    @abstractmethod
    def size(self, name: str) -> int | None:
        """The size of the file or object `name`; None when there is none."""

    def exists(self, name: str) -> bool:
        """Whether `name` is a file or object, or has any below it."""
        return self.size(name) is not None or bool(self.list(name.rstrip("/") + "/"))

    @abstractmethod
    def list(self, prefix: str = "") -> dict[str, int]:
        """Every file or object below `prefix` ("" or ending in "/"), by name, and its size."""

    @abstractmethod
    def list_versions(self, prefix: str = "") -> dict[str, tuple[int, str]]:
        """As `list`, with a tag that changes whenever the content may have (an etag, an mtime)."""

    @abstractmethod
    def top_level(self) -> set[str]:
        """The names directly under the root (a directory or common prefix without its slash);
        empty when the root does not exist."""

    # ---- writing ----------------------------------------------------------------------------
    @abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Write (or replace) `name` whole: a reader sees the old bytes or the new ones."""

    def put_many(self, files: dict[str, bytes]) -> None:
        list(_POOL.map(lambda item: self.put(*item), files.items()))

    @abstractmethod
    def create(self, name: str, data: bytes) -> None:
        """Write `name` only if nothing has that name; ObjectExistsError when something other than
        these bytes is there (a write of ours whose reply was lost is a success)."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete the file or object `name` (nothing there: nothing to do)."""

    def delete_many(self, names: Iterable[str]) -> None:
        list(_POOL.map(self.delete, list(names)))

    @abstractmethod
    def delete_tree(self, prefix: str) -> None:
        """Delete everything below the directory or prefix `prefix` (without a trailing slash)."""

    # ---- shards -----------------------------------------------------------------------------
    @abstractmethod
    def write_shard(
        self,
        index: int,
        backend: str,
        files: Callable[[bool], dict[str, bytes]],
        describe: Callable[[str, str, int], Any],
        guard: Guard | None,
    ) -> Any:
        """Write one shard so that it appears whole or not at all; -> `describe(name, sha256,
        num_bytes)` (its shard entry, with `to_json()`). `files(one_object)` gives its encoded
        files ({"": bytes} for one file or object). `guard` is checked before each write."""

    @abstractmethod
    def shard_candidates(self, num_shards: int, backend: str) -> dict[int, list[Candidate]]:
        """Per shard index below `num_shards`, the writes a resuming writer may keep."""

    @abstractmethod
    def shard_files(self, name: str) -> dict[str, bytes]:
        """The files of the shard `name` ({"": bytes} for one file or object; a directory's or
        prefix's files by relative path); FileNotFoundError when it is missing."""

    @abstractmethod
    def discard_shards(self, keep: set[str]) -> None:
        """Delete every shard write not named in `keep`, and any partial write."""

    # ---- the single writer ------------------------------------------------------------------
    @abstractmethod
    def exclusive(self, lease_seconds: float | None = None) -> Exclusive:
        """Exclusive access for one writer (StoreLockedError when another holds it); a lease lasts
        `lease_seconds` (default: the LOGITSTORE_LEASE_SECONDS setting)."""
