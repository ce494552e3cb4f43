"""A storage on object storage (s3://, gs://, az://; memory:// within one process, for tests).

One client for everything: obstore (the Rust `object_store` crate). Chosen by what the commit
needs and by measurement (bench/object_store.py, BENCHMARKS.md): it has the conditional writes
object stores offer instead of rename and flock (create-only `If-None-Match: *`, compare-and-swap
`If-Match: <etag>`, GCS's generation), which pyarrow.fs lacks (apache/arrow #44281), and it read
fastest of the three against the local test server. Endpoints and credentials come from the
client's usual environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ALLOW_HTTP,
GOOGLE_APPLICATION_CREDENTIALS, ...): nothing is hard-coded.

Object stores have no rename: each write of a shard is an object of its own,
`shards/00012.<attempt>.arrow` (or `.zarr.zip`), followed by its marker `shards/00012.<attempt>.done`
(the shard entry, JSON); an attempt without a marker is a leftover, never read. The manifest names
one attempt per shard (FORMAT.md, "Stores on object storage").
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from logitstore.checksum import files_checksum
from logitstore.errors import StoreError
from logitstore.storage.base import (
    Candidate,
    Exclusive,
    Guard,
    ObjectExistsError,
    Storage,
    check_name,
    shard_name,
    uri_scheme,
)
from logitstore.storage.errors import ObjectPreconditionError, ObjectStoreRefusedError, allow_http, classify
from logitstore.storage.settings import retry_seconds

MEMORY_SCHEME = "memory"
_ATTEMPT = re.compile(r"^shards/([0-9]{5,9})\.([0-9a-f]{12})\.(zarr\.zip|zarr|arrow|done)(/.*)?$")


@dataclass(frozen=True)
class Head:
    size: int
    etag: str
    version: str | None  # GCS: the generation a compare-and-swap needs; S3: a version id (versioned buckets)
    modified: datetime  # the server's Last-Modified


def attempt_of(name: str) -> tuple[str, str] | None:
    """(index digits, attempt tag) of any object of a shard attempt, marker included."""
    m = _ATTEMPT.match(name)
    return (m.group(1), m.group(2)) if m else None


class ObjectStorage(Storage):
    """The objects under one URI prefix. Picklable (by its URI): each process opens its own client."""

    def __init__(self, uri: str, retry_seconds: float | None = None) -> None:
        self.uri = uri.rstrip("/")
        bucket, _, prefix = self.uri.split("://", 1)[-1].partition("/")
        if not bucket or (prefix and not _valid_name(prefix)):
            raise ObjectStoreRefusedError(
                f"{uri} is not a valid object-storage URI: scheme://bucket/prefix, the prefix without empty, '.' or "
                "'..' segments"
            )
        self.retry_seconds = retry_seconds
        self._store, self._prefix = _open(self.uri, retry_seconds, _client_settings())

    def __reduce__(self):
        return (ObjectStorage, (self.uri, self.retry_seconds))

    def with_retry(self, retry_seconds: float | None) -> ObjectStorage:
        """The same prefix through a client that retries a request for `retry_seconds` (None: the
        LOGITSTORE_OBJECT_RETRY_SECONDS setting)."""
        return ObjectStorage(self.uri, retry_seconds)

    def _key(self, name: str) -> str:
        check_name(name.rstrip("/"), self.uri)
        return self._prefix + name

    def _rel(self, key: str) -> str:
        return key[len(self._prefix) :]

    def _call(self, fn: Callable[[], Any], name: str) -> Any:
        try:
            return fn()
        except StoreError:
            raise
        except Exception as exc:
            raise classify(exc, self.uri, name) from None

    # ---- reading ----------------------------------------------------------------------------
    def get(self, name: str) -> bytes:
        import obstore

        return bytes(self._call(lambda: obstore.get(self._store, self._key(name)).bytes(), name))

    def read_into(self, name: str, sink: Callable[[bytes], Any]) -> None:
        import obstore

        pieces = iter(
            self._call(lambda: obstore.get(self._store, self._key(name)).stream(min_chunk_size=16 << 20), name)
        )
        while (piece := self._call(lambda: next(pieces, None), name)) is not None:
            sink(piece)  # outside _call: the sink's own errors (a full disk) are not the object store's

    def head(self, name: str) -> Head | None:
        import obstore

        try:
            meta = self._call(lambda: obstore.head(self._store, self._key(name)), name)
        except FileNotFoundError:
            return None
        return Head(int(meta["size"]), str(meta["e_tag"]), meta.get("version"), meta["last_modified"])

    def size(self, name: str) -> int | None:
        head = self.head(name)
        return None if head is None else head.size

    def list(self, prefix: str = "") -> dict[str, int]:
        return {name: size for name, (size, _) in self.list_versions(prefix).items()}

    def list_versions(self, prefix: str = "") -> dict[str, tuple[int, str]]:
        import obstore

        key = self._key(prefix) if prefix else self._prefix or None

        def listing() -> dict[str, tuple[int, str]]:
            return {
                self._rel(o["path"]): (int(o["size"]), str(o.get("e_tag") or ""))
                for batch in obstore.list(self._store, prefix=key)
                for o in batch
            }

        return self._call(listing, prefix)

    def top_level(self) -> set[str]:
        import obstore

        listing = self._call(lambda: obstore.list_with_delimiter(self._store, self._prefix or None), "")
        names = [self._rel(p) for p in listing["common_prefixes"]] + [self._rel(o["path"]) for o in listing["objects"]]
        return {n.rstrip("/") for n in names}

    # ---- writing ----------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        import obstore

        self._call(lambda: obstore.put(self._store, self._key(name), data), name)

    def create(self, name: str, data: bytes) -> None:
        import obstore

        try:
            self._call(lambda: obstore.put(self._store, self._key(name), data, mode="create"), name)
        except ObjectPreconditionError:
            # The client retries a request whose reply was lost: our own first write then fails the
            # condition. What the server holds decides.
            if self._get_or_none(name) != data:
                raise ObjectExistsError(f"{self.uri}/{name} exists already") from None

    def swap(self, name: str, data: bytes, seen: Head) -> Head:
        """Replace `name` only if it is still the object `seen` (its etag, and GCS's generation);
        -> its new head. ObjectPreconditionError when it changed or is gone (a write of ours
        whose reply was lost is a success)."""
        import obstore

        mode = {"e_tag": seen.etag, **({"version": seen.version} if seen.version else {})}
        try:
            self._call(lambda: obstore.put(self._store, self._key(name), data, mode=mode), name)
        except (ObjectPreconditionError, FileNotFoundError):
            if self._get_or_none(name) != data:
                raise ObjectPreconditionError(f"{self.uri}/{name} changed") from None
        head = self.head(name)
        if head is None:
            raise ObjectPreconditionError(f"{self.uri}/{name} is gone")
        return head

    def _get_or_none(self, name: str) -> bytes | None:
        try:
            return self.get(name)
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        import obstore

        try:
            self._call(lambda: obstore.delete(self._store, self._key(name)), name)
        except FileNotFoundError:
            pass

    def delete_tree(self, prefix: str) -> None:
        prefix = prefix.rstrip("/")
        self.delete_many([*self.list(prefix + "/"), prefix])

    def exists(self, name: str) -> bool:
        import obstore

        if self.size(name) is not None:
            return True
        key = self._key(name.rstrip("/") + "/")
        return bool(self._call(lambda: next(iter(obstore.list(self._store, prefix=key, chunk_size=1)), []), name))

    # ---- shards -----------------------------------------------------------------------------
    def write_shard(
        self,
        index: int,
        backend: str,
        files: Callable[[bool], dict[str, bytes]],
        describe: Callable[[str, str, int], Any],
        guard: Guard | None,
    ) -> Any:
        name = shard_name(index, backend, uuid.uuid4().hex[:12])
        content = files(True)
        sha, nbytes = files_checksum(content)
        if guard is not None:
            guard.check()
        self.put(name, content[""])
        info = describe(name, sha, nbytes)
        if guard is not None:
            guard.check()
        self.put(_marker(name), json.dumps(info.to_json()).encode())  # last: the attempt is whole
        return info

    def shard_candidates(self, num_shards: int, backend: str) -> dict[int, list[Candidate]]:
        markers = [n for n in self.list("shards/") if _is_marker(n) and _index(n) < num_shards]
        found: dict[int, list[Candidate]] = {}
        for name, blob in sorted(self.get_many(markers).items()):
            try:
                marker = json.loads(blob)
                candidate = Candidate(str(marker["name"]), marker)
            except (ValueError, TypeError, KeyError):
                continue  # a damaged marker: its attempt is a leftover
            # the write its marker names: of this marker's attempt, one object or a version-7 prefix
            written = _ATTEMPT.match(candidate.name)
            if (
                written
                and written.group(4) is None
                and written.group(3) != "done"
                and attempt_of(name) == written.group(1, 2)
            ):
                found.setdefault(_index(name), []).append(candidate)
        return found

    def shard_files(self, name: str) -> dict[str, bytes]:
        if name.endswith((".arrow", ".zip")):
            return {"": self.get(name)}
        names = sorted(self.list(name + "/"))  # a version-7 Zarr group: a prefix of objects
        if not names:
            raise FileNotFoundError(f"{self.uri}/{name}")
        return {path[len(name) + 1 :]: data for path, data in self.get_many(names).items()}

    def discard_shards(self, keep: set[str]) -> None:
        """Every attempt not in `keep` (markers first: an attempt stops counting at once)."""
        kept = {attempt_of(name) for name in keep}
        doomed = [n for n in self.list("shards/") if attempt_of(n) is not None and attempt_of(n) not in kept]
        self.delete_many([n for n in doomed if n.endswith(".done")])
        self.delete_many([n for n in doomed if not n.endswith(".done")])

    # ---- the single writer ------------------------------------------------------------------
    def exclusive(self, lease_seconds: float | None = None) -> Exclusive:
        from logitstore.storage.lease import StoreLease

        return StoreLease(self, lease_seconds)


def _valid_name(name: str) -> bool:
    try:
        check_name(name, "")
    except StoreError:
        return False
    return True


def _is_marker(name: str) -> bool:
    m = _ATTEMPT.match(name)
    return bool(m) and m.group(3) == "done" and m.group(4) is None


def _marker(name: str) -> str:
    digits, attempt = attempt_of(name)
    return f"shards/{digits}.{attempt}.done"


def _index(name: str) -> int:
    return int(attempt_of(name)[0])


_MEMORY: dict[str, Any] = {}


def _client_settings() -> tuple[tuple[str, str], ...]:
    """The environment a client is built from: a client is reused only while it has not changed."""
    return tuple(
        sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_", "AZURE_", "LOGITSTORE_")))
    )


@lru_cache(maxsize=64)
def _open(uri: str, given: float | None, environment: tuple[tuple[str, str], ...]) -> tuple[Any, str]:
    """The client of `uri` and the prefix its names need (memory:// keeps one store per bucket in
    this process, as a server would)."""
    scheme = uri_scheme(uri)
    if scheme == MEMORY_SCHEME:
        from obstore.store import MemoryStore

        bucket, _, prefix = uri[len("memory://") :].partition("/")
        store = _MEMORY.setdefault(bucket, MemoryStore())
        return store, f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    from obstore.store import from_url

    seconds = retry_seconds() if given is None else given
    retry = {"max_retries": 10, "retry_timeout": timedelta(seconds=seconds)}
    # Client options given here replace those the client reads from the environment: AWS_ALLOW_HTTP
    # is carried over (left out when false: a GCS endpoint on http:// needs the client's default).
    options: dict[str, Any] = {"allow_http": True} if allow_http() else {}
    if given is not None:  # a client with a short retry (the lease's) also gives up on one hung request as soon
        options["timeout"] = timedelta(seconds=max(1.0, seconds))
    try:
        return from_url(uri, retry_config=retry, **({"client_options": options} if options else {})), ""
    except Exception as exc:
        raise classify(exc, uri, "") from None
