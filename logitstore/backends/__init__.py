"""Backends: each stores one shard's named arrays on disk and reads them back, nothing more.

The contract (checked for every backend by the conformance classes of logitstore/testing.py):
  write(path, arrays) -> None   creates `path` (must not exist) holding `arrays`
  read(path) -> arrays          returns exactly what was written, dtypes included
`arrays` maps names to numpy arrays: `sample_id` [S], `position_offsets` [S+1], and any number of
per-position arrays whose leading axis is the position (P rows, 1-D or 2-D); in a store that
carries its inputs also `token_offsets` [S+1] and the per-token arrays of PER_TOKEN (N rows, 1-D).
What the arrays mean is the codec's business (logitstore/codec.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

PER_SAMPLE = ("sample_id", "position_offsets", "token_offsets")
PER_TOKEN = ("input_ids", "loss_mask")
ZSTD_LEVEL = 6  # on LM teacher outputs: 2% smaller than level 3, still > 100 MB/s (bench/store.py)


class Backend(Protocol):
    name: str

    def write(self, path: str, arrays: dict[str, np.ndarray]) -> None: ...

    def read(self, path: str) -> dict[str, np.ndarray]: ...


def get_backend(name: str) -> Backend:
    if name == "zarr":
        from logitstore.backends.zarr import ZarrBackend

        return ZarrBackend()
    if name == "arrow":
        from logitstore.backends.arrow import ArrowBackend

        return ArrowBackend()
    from logitstore.errors import StoreError

    raise StoreError(f"unknown store backend {name!r}: use zarr or arrow")
