"""The user's data files on object storage (`--dataset s3://bucket/data/` or one object): listing
and reading them as the local files are listed and read. Each read task fetches its own file, so
no node needs a disk the driver wrote to. A datasets directory written by `save_to_disk` and
uploaded under a prefix is read the same way (trainer/inputs/textfiles.py: its state.json names
its Arrow files)."""

from __future__ import annotations

from pathlib import PurePosixPath

from logitstore.storage import is_object_uri, open_storage

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")

__all__ = ["is_object_uri", "uri_files", "read_bytes", "suffix", "name"]


def _split(uri: str) -> tuple[str, str]:
    """s3://bucket/a/b -> (s3://bucket, a/b)."""
    scheme, rest = uri.split("://", 1)
    bucket, _, key = rest.partition("/")
    return f"{scheme}://{bucket}", key


def uri_files(spec: str) -> list[str]:
    """The data objects (by suffix) at `spec`: the object itself, or every one below the prefix,
    sorted; [] when there is none."""
    root, key = _split(spec.rstrip("/"))
    location = open_storage(root)
    if PurePosixPath(key).suffix in DATA_SUFFIXES and location.size(key) is not None:
        return [spec.rstrip("/")]
    below = location.list(f"{key}/" if key else "")
    return sorted(f"{root}/{k}" for k in below if PurePosixPath(k).suffix in DATA_SUFFIXES)


def read_bytes(uri: str) -> bytes:
    root, key = _split(uri)
    return open_storage(root).get(key)


def suffix(path: str) -> str:
    return PurePosixPath(path).suffix


def name(path: str) -> str:
    return PurePosixPath(path).name
