"""Backends: each turns a ShardData into one shard on disk and back, nothing more.

The contract (checked by tests/test_store_conformance.py for every backend):
  write(path, data, index_dtype) -> None   creates `path` (must not exist) holding `data`
  read(path) -> ShardData                  returns exactly what was written, dtypes included
"""

from __future__ import annotations

from typing import Protocol

from logitstore.shard import ShardData


class Backend(Protocol):
    name: str

    def write(self, path: str, data: ShardData) -> None: ...

    def read(self, path: str) -> ShardData: ...


def get_backend(name: str) -> Backend:
    if name == "zarr":
        from logitstore.backends.zarr_backend import ZarrBackend

        return ZarrBackend()
    if name == "arrow":
        from logitstore.backends.arrow_backend import ArrowBackend

        return ArrowBackend()
    raise ValueError(f"unknown store format {name!r}: use zarr or arrow")
