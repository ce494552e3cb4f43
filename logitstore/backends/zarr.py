"""Zarr v3 backend: one shard is one Zarr group; each array is a single sharded, zstd-compressed Zarr array.

On disk the group is a directory; on object storage (format version 8) it is one object, the
group's files in an uncompressed ZIP, because a group of ~16 small objects costs ~16 requests per
shard read (BENCHMARKS.md, "Object storage")."""

from __future__ import annotations

import asyncio
import io
import os
import zipfile

import numpy as np
from zarr.codecs import ZstdCodec
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from logitstore.backends.arrays import ENTRY_OFFSETS, ZSTD_LEVEL

CHUNK_ROWS = 8192


class ZarrBackend:
    name = "zarr"

    def write(self, path: str, arrays: dict[str, np.ndarray]) -> None:
        # All arrays in one trip through zarr's event loop, as in read().
        sync(_write_all(path, arrays))

    def read(self, path: str) -> dict[str, np.ndarray]:
        if os.path.isfile(path):  # a ZIP shard (a local copy of a store on object storage)
            with open(path, "rb") as f:
                return self.decode({"": f.read()})
        # All arrays in one trip through zarr's event loop (one blocking call per array costs more
        # than decompressing it).
        return sync(_read_all(path))

    def encode(self, arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
        """The files `write` would create, by relative path, made in memory (same bytes)."""
        files: dict = {}
        sync(_write_all(MemoryStore(store_dict=files), arrays))
        return {name: buffer.to_bytes() for name, buffer in files.items()}

    def encode_object(self, arrays: dict[str, np.ndarray]) -> bytes:
        """The shard as one object (object storage): `encode`'s files in a ZIP (see zip_group)."""
        return zip_group(self.encode(arrays))

    def decode(self, files: dict[str, bytes]) -> dict[str, np.ndarray]:
        """What `read` returns for a shard whose files are `files` (relative path -> bytes), or
        whose one object is `{"": zip bytes}`."""
        if set(files) == {""}:
            files = unzip_group(files[""])
        store = MemoryStore(store_dict={name: Buffer.from_bytes(data) for name, data in files.items()}, read_only=True)
        return sync(_read_all(store))


async def _write_all(path, arrays: dict[str, np.ndarray]) -> None:
    from zarr.api.asynchronous import open_group

    group = await open_group(store=path, mode="w-", zarr_format=3)

    async def one(name: str, array: np.ndarray) -> None:
        rows = max(1, min(CHUNK_ROWS, array.shape[0]))
        # One Zarr shard per array: a shard file is written by one task only, as Zarr requires.
        n_chunks = -(-max(array.shape[0], 1) // rows)
        arr = await group.create_array(
            name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=(rows,) + array.shape[1:],
            shards=(n_chunks * rows,) + array.shape[1:],
            compressors=ZstdCodec(level=ZSTD_LEVEL),
            fill_value=0,
        )
        if array.size:
            await arr.setitem(..., array)

    # Wait for every write to end before raising the first error: a caller that cleans up after
    # a failure (a full disk) must not race writes still in flight.
    stored = {name: array for name, array in arrays.items() if name != ENTRY_OFFSETS}  # a hint: see backends
    results = await asyncio.gather(*(one(name, array) for name, array in stored.items()), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]


async def _read_all(path) -> dict[str, np.ndarray]:
    from zarr.api.asynchronous import open_group

    group = await open_group(store=path, mode="r", zarr_format=3)
    arrays = [a async for _, a in group.arrays()]
    values = await asyncio.gather(*(a.getitem(...) for a in arrays))
    return {a.basename: np.asarray(v) for a, v in zip(arrays, values)}


# A fixed timestamp: the same arrays always make the same bytes (checksums, golden stores).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def zip_group(files: dict[str, bytes]) -> bytes:
    """A Zarr group's files as one ZIP: members stored uncompressed (the chunks are zstd already,
    and a stored member can be read by a byte range), in sorted order, at a fixed time. zarr's
    own ZipStore opens it."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(files):
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), files[name])
    return out.getvalue()


def unzip_group(blob: bytes) -> dict[str, bytes]:
    """The files of a ZIP shard; ValueError for anything but distinct, stored members (the reader
    reports it as a damaged shard, by name)."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            members = archive.infolist()
            names = [m.filename for m in members]
            if len(set(names)) != len(names) or any(m.compress_type != zipfile.ZIP_STORED for m in members):
                raise ValueError("a ZIP shard must hold distinct, uncompressed members")
            return {m.filename: archive.read(m) for m in members}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise ValueError(f"not a readable ZIP shard ({exc})") from None
