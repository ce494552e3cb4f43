"""Arrow backend: one shard is one Arrow IPC file (zstd-compressed buffers), one row per sample."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from logitstore.backends.arrays import ENTRY_OFFSETS, PER_ENTRY, PER_SAMPLE, PER_TOKEN, ZSTD_LEVEL
from logitstore.errors import ShardCorruptError


def _nested(values: np.ndarray, offsets: np.ndarray) -> pa.LargeListArray:
    """[P] or [P, w] values + per-sample offsets -> large_list<T> or large_list<fixed_size_list<T, w>>."""
    flat = pa.array(values.reshape(-1))
    inner = flat if values.ndim == 1 else pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), inner)


def _flat(column: pa.ChunkedArray, field_type: pa.DataType) -> tuple[np.ndarray, np.ndarray]:
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    inner = arr.values.slice(start, end - start)
    if pa.types.is_fixed_size_list(field_type.value_type):
        width = field_type.value_type.list_size
        values = inner.flatten().to_numpy(zero_copy_only=False).reshape(end - start, width)
    else:
        values = inner.to_numpy(zero_copy_only=False)
    return values, offsets - start


class ArrowBackend:
    name = "arrow"

    def write(self, path: str, arrays: dict[str, np.ndarray]) -> None:
        with pa.OSFile(path, "wb") as sink:
            _write_table(sink, _table(arrays))

    def read(self, path: str) -> dict[str, np.ndarray]:
        with pa.memory_map(path, "r") as source:
            return _arrays(pa.ipc.open_file(source).read_all(), path)

    def encode(self, arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
        """The file `write` would create, as {"": bytes} (a one-file shard), made in memory."""
        sink = pa.BufferOutputStream()
        _write_table(sink, _table(arrays))
        return {"": sink.getvalue().to_pybytes()}

    def encode_object(self, arrays: dict[str, np.ndarray]) -> bytes:
        """The shard as one object (object storage): the file itself."""
        return self.encode(arrays)[""]

    def decode(self, files: dict[str, bytes]) -> dict[str, np.ndarray]:
        """What `read` returns for a shard whose file holds `files[""]`."""
        if set(files) != {""}:
            raise ShardCorruptError(f"an Arrow shard is one file, not {sorted(files)}")
        return _arrays(pa.ipc.open_file(pa.BufferReader(files[""])).read_all(), "shard")


def _table(arrays: dict[str, np.ndarray]) -> pa.Table:
    offsets = arrays["position_offsets"]
    columns = {"sample_id": pa.array(arrays["sample_id"], type=pa.int64())}
    for name, a in arrays.items():
        if name in PER_TOKEN:  # a sample's tokens: their own offsets
            columns[name] = _nested(a, arrays["token_offsets"])
        elif name in PER_ENTRY and ENTRY_OFFSETS in arrays:  # packed entries of a sample's positions
            columns[name] = _nested(a, arrays[ENTRY_OFFSETS])
        elif name not in PER_SAMPLE and name != ENTRY_OFFSETS:
            columns[name] = _nested(a, offsets)
    return pa.table(columns)


def _write_table(sink, table: pa.Table) -> None:
    options = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=ZSTD_LEVEL))
    with pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)


def _arrays(table: pa.Table, path: str) -> dict[str, np.ndarray]:
    out = {"sample_id": table.column("sample_id").to_numpy()}  # its dtype as stored: the codec checks it
    offsets: dict[str, np.ndarray] = {}  # per kind of list column: positions or tokens
    for name in table.column_names:
        if name == "sample_id":
            continue
        field_type = table.schema.field(name).type
        values, col_offsets = _flat(table.column(name), field_type)
        kind = "token_offsets" if name in PER_TOKEN else "position_offsets"
        if name in PER_ENTRY and not pa.types.is_fixed_size_list(field_type.value_type):
            kind = ENTRY_OFFSETS  # packed: one list entry per stored class
        if kind in offsets and not np.array_equal(offsets[kind], col_offsets):
            raise ShardCorruptError(f"{path}: list columns disagree on {kind.split('_')[0]}s per sample")
        offsets[kind] = col_offsets
        out[name] = values
    out["position_offsets"] = offsets.get("position_offsets", np.zeros(out["sample_id"].shape[0] + 1, np.int64))
    for kind in ("token_offsets", ENTRY_OFFSETS):
        if kind in offsets:
            out[kind] = offsets[kind]
    return out
