"""Backends: each stores one shard's named arrays on disk and reads them back, nothing more.

The contract (checked for every backend by the conformance classes of logitstore/testing.py):
  write(path, arrays) -> None   creates `path` (must not exist) holding `arrays`
  read(path) -> arrays          returns exactly what was written, dtypes included
  encode(arrays) -> files       the files `write` would create, {relative path: bytes} ({"": bytes}
                                for a one-file shard), made in memory: what goes to an object store
  encode_object(arrays) -> bytes  the shard as one object, what a store on object storage holds
                                (Arrow: the file; Zarr: its files in a ZIP, FORMAT.md version 8)
  decode(files) -> arrays       what `read` returns for those files, or for {"": one object}
`arrays` maps names to numpy arrays: `sample_id` [S], `position_offsets` [S+1], and any number of
per-position arrays whose leading axis is the position (P rows, 1-D or 2-D); in a store that
carries its inputs also `token_offsets` [S+1] and the per-token arrays of PER_TOKEN (N rows, 1-D);
in an adaptive top-k store `entry_offsets` [S+1] and the packed arrays of PER_ENTRY (E rows, 1-D).
`entry_offsets` is a hint, not content: a backend that keeps rows per sample (Arrow) nests the
packed arrays by it and returns it; one that does not (Zarr) neither stores nor returns it.
What the arrays mean is the codec's business (logitstore/codec.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from logitstore.backends.arrays import ENTRY_OFFSETS, PER_ENTRY, PER_SAMPLE, PER_TOKEN, ZSTD_LEVEL

__all__ = ["ENTRY_OFFSETS", "PER_ENTRY", "PER_SAMPLE", "PER_TOKEN", "ZSTD_LEVEL", "Backend", "get_backend"]


class Backend(Protocol):
    name: str

    def write(self, path: str, arrays: dict[str, np.ndarray]) -> None: ...

    def read(self, path: str) -> dict[str, np.ndarray]: ...

    def encode(self, arrays: dict[str, np.ndarray]) -> dict[str, bytes]: ...

    def encode_object(self, arrays: dict[str, np.ndarray]) -> bytes: ...

    def decode(self, files: dict[str, bytes]) -> dict[str, np.ndarray]: ...


def get_backend(name: str) -> Backend:
    if name == "zarr":
        from logitstore.backends.zarr import ZarrBackend

        return ZarrBackend()
    if name == "arrow":
        from logitstore.backends.arrow import ArrowBackend

        return ArrowBackend()
    from logitstore.errors import StoreError

    raise StoreError(f"unknown store backend {name!r}: use zarr or arrow")
