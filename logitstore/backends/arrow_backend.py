"""Arrow backend: one shard is one Arrow IPC file (zstd-compressed buffers), one row per sample."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from logitstore.errors import ShardCorruptError
from logitstore.shard import ShardData

LIST_COLUMNS = ("topk_index", "topk_logit", "logsumexp")
SAMPLE_COLUMNS = ("sample_index", "sample_count")


def _nested(values: np.ndarray, offsets: np.ndarray) -> pa.LargeListArray:
    """[P, w] values + per-sample offsets -> large_list<fixed_size_list<w>> with one entry per sample."""
    inner = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), inner)


def _flat(column: pa.ChunkedArray, width: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    inner = arr.values.slice(start, end - start)
    values = inner.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values.reshape(end - start, width), offsets - start


class ArrowBackend:
    name = "arrow"

    def write(self, path: str, data: ShardData) -> None:
        offsets = data.position_offsets
        table = pa.table(
            {
                "sample_id": pa.array(data.sample_id, type=pa.int64()),
                "topk_index": _nested(data.topk_index, offsets),
                "topk_logit": _nested(data.topk_logit, offsets),
                "logsumexp": _nested(data.logsumexp, offsets),
                **({"sample_index": _nested(data.sample_index, offsets), "sample_count": _nested(data.sample_count, offsets)}
                   if data.has_samples else {}),
            }
        )
        options = pa.ipc.IpcWriteOptions(compression="zstd")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as writer:
            writer.write_table(table)

    def read(self, path: str) -> ShardData:
        with pa.memory_map(path, "r") as source:
            table = pa.ipc.open_file(source).read_all()
        columns = {}
        offsets = None
        present = LIST_COLUMNS + tuple(c for c in SAMPLE_COLUMNS if c in table.column_names)
        for name in present:
            field_type = table.schema.field(name).type
            width = field_type.value_type.list_size
            dtype = field_type.value_type.value_type.to_pandas_dtype()
            values, col_offsets = _flat(table.column(name), width, np.dtype(dtype))
            if offsets is not None and not np.array_equal(offsets, col_offsets):
                raise ShardCorruptError(f"{path}: list columns disagree on positions per sample")
            offsets = col_offsets
            columns[name] = values
        return ShardData(
            sample_id=table.column("sample_id").to_numpy().astype(np.int64, copy=False),
            position_offsets=offsets,
            **columns,
        )
