"""Zarr v3 backend: one shard is one Zarr group; each array is a single sharded, zstd-compressed Zarr array."""

from __future__ import annotations

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

CHUNK_ROWS = 8192


class ZarrBackend:
    name = "zarr"

    def write(self, path: str, arrays: dict[str, np.ndarray]) -> None:
        group = zarr.open_group(path, mode="w-", zarr_format=3)
        for name, array in arrays.items():
            rows = max(1, min(CHUNK_ROWS, array.shape[0]))
            chunks = (rows,) + array.shape[1:]
            # One Zarr shard per array: a shard file is written by one task only, as Zarr requires.
            n_chunks = -(-max(array.shape[0], 1) // rows)
            shards = (n_chunks * rows,) + array.shape[1:]
            arr = group.create_array(
                name,
                shape=array.shape,
                dtype=array.dtype,
                chunks=chunks,
                shards=shards,
                compressors=ZstdCodec(level=3),
                fill_value=0,
            )
            if array.size:
                arr[...] = array

    def read(self, path: str) -> dict[str, np.ndarray]:
        group = zarr.open_group(path, mode="r", zarr_format=3)
        return {name: np.asarray(arr[...]) for name, arr in group.arrays()}
