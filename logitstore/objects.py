"""Stores on object storage (s3://, gs://, az://): where a store lives, and the few operations the
store's protocol needs there.

One client for everything: obstore (the Rust `object_store` crate). Chosen by what the commit
needs and by measurement (bench/object_store.py, BENCHMARKS.md): it has the conditional writes
object stores offer instead of rename and flock (create-only `If-None-Match: *`, compare-and-swap
`If-Match: <etag>`), which pyarrow.fs lacks (apache/arrow #44281), and it read fastest of the three
against the local test server. Endpoints and credentials come from the client's usual environment
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ALLOW_HTTP, GOOGLE_APPLICATION_CREDENTIALS,
...): nothing is hard-coded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from logitstore.errors import StoreError

OBJECT_SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss")
_URI = re.compile(r"^([a-z][a-z0-9+.-]*)://(.*)$")
# How long one request is retried (obstore's backoff) before it is an error; obstore's own default
# is 3 minutes. Tests of a server that went away set it lower.
RETRY_SECONDS_ENV = "LOGITSTORE_OBJECT_RETRY_SECONDS"
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="logitstore-objects")


class StoreUnreachableError(StoreError):
    """The object store did not answer (server down, wrong endpoint, no network)."""


class ObjectPreconditionError(StoreError):
    """A conditional write lost: the object exists (create-only) or changed (compare-and-swap)."""


def is_object_uri(location: str | os.PathLike) -> bool:
    """Whether `location` names object storage (s3://, gs://, az://...) rather than a local path."""
    match = _URI.match(str(location))
    return bool(match) and match.group(1) in OBJECT_SCHEMES


def local_path(location: str | os.PathLike) -> Path:
    """A local path, given as a path or a file:// URI."""
    text = str(location)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    match = _URI.match(text)
    if match:
        raise StoreError(
            f"{text}: the scheme {match.group(1)}:// is not supported; use a local path, file://, "
            f"or one of {', '.join(s + '://' for s in OBJECT_SCHEMES)}"
        )
    return Path(text)


def join(location: str, name: str) -> str:
    """`location` and a relative name, as a URI or a path string."""
    return f"{location.rstrip('/')}/{name}" if is_object_uri(location) else str(Path(location) / name)


@dataclass(frozen=True)
class Head:
    size: int
    etag: str
    age_seconds: float  # since its last write, by the server's clock against ours


class ObjectLocation:
    """The objects under one URI prefix. Names are relative POSIX paths below it. Picklable (by its
    URI): each process opens its own client."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self._store = _open(self.uri)

    def __reduce__(self):
        return (ObjectLocation, (self.uri,))

    def __repr__(self) -> str:
        return self.uri

    def get(self, name: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        import obstore

        return bytes(self._call(lambda: obstore.get(self._store, name).bytes(), name))

    def get_many(self, names: list[str]) -> dict[str, bytes]:
        """Several objects, fetched concurrently."""
        return dict(zip(names, _POOL.map(self.get, names)))

    def download(self, name: str, path: Path) -> None:
        """Stream the object to the file `path` in 16 MiB pieces (a weight file is never held in
        memory whole); FileNotFoundError when there is none."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            self.read_into(name, out.write)

    def read_into(self, name: str, sink: Callable[[bytes], Any]) -> None:
        """Feed the object to `sink` in pieces of 16 MiB (hashing or copying a large file without
        holding it); FileNotFoundError when there is none."""
        import obstore

        def feed() -> None:
            for piece in obstore.get(self._store, name).stream(min_chunk_size=16 << 20):
                sink(piece)

        self._call(feed, name)

    def download_many(self, targets: dict[str, Path]) -> None:
        """Several objects to their files, concurrently."""
        list(_POOL.map(lambda item: self.download(*item), targets.items()))

    def head(self, name: str) -> Head | None:
        import obstore

        try:
            meta = self._call(lambda: obstore.head(self._store, name), name)
        except FileNotFoundError:
            return None
        from datetime import datetime

        age = (datetime.now(UTC) - meta["last_modified"]).total_seconds()
        return Head(size=int(meta["size"]), etag=str(meta["e_tag"]), age_seconds=age)

    def put(self, name: str, data: bytes) -> str:
        """Write (or replace) one object; its new etag."""
        import obstore

        return str(self._call(lambda: obstore.put(self._store, name, data), name)["e_tag"])

    def put_many(self, files: dict[str, bytes]) -> None:
        list(_POOL.map(lambda item: self.put(*item), files.items()))

    def create(self, name: str, data: bytes) -> str:
        """Write `name` only if no object has that name (If-None-Match: *); its etag.
        ObjectPreconditionError when one exists."""
        import obstore

        return str(self._call(lambda: obstore.put(self._store, name, data, mode="create"), name)["e_tag"])

    def swap(self, name: str, data: bytes, etag: str) -> str:
        """Replace `name` only if it still has `etag` (If-Match); its new etag.
        ObjectPreconditionError when it changed or is gone."""
        import obstore

        return str(self._call(lambda: obstore.put(self._store, name, data, mode={"e_tag": etag}), name)["e_tag"])

    def delete(self, name: str) -> None:
        import obstore

        try:
            self._call(lambda: obstore.delete(self._store, name), name)
        except FileNotFoundError:
            pass

    def delete_many(self, names: list[str]) -> None:
        list(_POOL.map(self.delete, names))

    def list(self, prefix: str | None = None) -> dict[str, int]:
        """Every object under `prefix` (relative names) and its size."""
        import obstore

        def listing() -> dict[str, int]:
            return {o["path"]: int(o["size"]) for batch in obstore.list(self._store, prefix=prefix) for o in batch}

        return self._call(listing, prefix or "")

    def stat_all(self, prefix: str | None = None) -> dict[str, tuple[int, str]]:
        """Every object under `prefix` (relative names): its size and etag."""
        import obstore

        def listing() -> dict[str, tuple[int, str]]:
            return {
                o["path"]: (int(o["size"]), str(o.get("e_tag") or ""))
                for batch in obstore.list(self._store, prefix=prefix)
                for o in batch
            }

        return self._call(listing, prefix or "")

    def _call(self, fn, name: str) -> Any:
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        try:
            return fn()
        except (NotFoundError, FileNotFoundError):
            raise FileNotFoundError(f"{self.uri}/{name}") from None
        except (AlreadyExistsError, PreconditionError):
            raise ObjectPreconditionError(f"{self.uri}/{name} exists or changed") from None
        except StoreError:
            raise
        except Exception as exc:
            raise StoreUnreachableError(
                f"the object store did not answer for {self.uri}/{name} (endpoint {endpoint()}: "
                f"{_first_line(exc)}): check that it is up and that AWS_ENDPOINT_URL and the credentials "
                "are right, then rerun the same command"
            ) from None


def endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default endpoint"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


@lru_cache(maxsize=64)
def _open(uri: str):
    from obstore.store import from_url

    seconds = float(os.environ.get(RETRY_SECONDS_ENV, "60"))
    retry = {"max_retries": 10, "retry_timeout": timedelta(seconds=seconds)}
    try:
        return from_url(uri, retry_config=retry)
    except Exception as exc:
        raise StoreError(f"cannot open {uri} ({_first_line(exc)}): check the URI and the client's settings") from None
