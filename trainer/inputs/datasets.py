"""Datasets by name, as Ray Datasets with the canonical columns, and their fingerprints.

Canonical columns: `id` int64 (unique), `label` int64 (-1 where the label is missing), and either
`features` float32 tensor (same shape every row) or, for token data, `input_ids` int64
[seq_len] (zero-padded) with `length` int64 (the valid tokens, 1..seq_len); text the dump
tokenises itself also has `loss_mask` uint8 [seq_len] (1 = the position is stored and trained;
without it every valid position is) and `cut` int64 (tokens cut off a row longer than seq_len).

A dataset spec is one of:
  - a built-in name: digits, digits-fewlabels, digits-eval; or the text of the Python standard
    library (stdlib, stdlib-eval, stdlib-small, stdlib-small-eval), tokenised by the
    TextOptions' tokenizer and packed into blocks of seq_len tokens;
  - a Parquet file or directory with `features` (list of floats) and optional `label` (int,
    nullable), or with `input_ids` (list of ints per row, at most seq_len); optional `id`
    (int64; else the row's position, files in sorted path order);
  - the user's text: JSONL / JSON / Parquet files (or directories) or a `datasets` directory
    (save_to_disk) with `text`, `messages` or `prompt` + `completion` (trainer/inputs/textfiles.py),
    tokenised with a Hugging Face tokenizer into blocks with a `loss_mask` (trainer/inputs/chat.py);
  - `package.module:function` returning a ray.data.Dataset with those columns.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from trainer.errors import DataError
from trainer.inputs import registry
from trainer.inputs.datafiles import is_object_uri, read_bytes
from trainer.inputs.specs import LM_SEQ_LEN, check_dataset_spec, import_callable, is_callable_spec, parquet_files
from trainer.inputs.textfiles import TextFile, read_rows, row_kind, text_files

TEXT_PARTS = 8  # read tasks per built-in text dataset; blocks never span two parts


@dataclass(frozen=True)
class TextOptions:
    """How text and token data become blocks: the tokenizer of built-in text (its JSON; None =
    bytes), the Hugging Face tokenizer of the user's text files (a directory or tokenizer.json),
    the block length, and what is trained (`completion`, `all`; "" = by the kind of row)."""

    tokenizer_json: str | None = None
    seq_len: int = LM_SEQ_LEN
    hf_tokenizer: str | None = None
    train_on: str = ""


def load_dataset(spec: str, what: str = "--dataset", text: TextOptions = TextOptions()) -> ray.data.Dataset:
    _check_spec(spec, what)
    if registry.is_text(spec):
        return ray.data.range(TEXT_PARTS, override_num_blocks=TEXT_PARTS).map_batches(
            _text_block, batch_size=1, fn_kwargs={"spec": spec, "text": text}
        )
    if spec in registry.DATASETS:
        # Several blocks, so that several teacher actors or training workers get work.
        blocks = 8
        return ray.data.range(blocks, override_num_blocks=blocks).map_batches(
            _features_block, batch_size=1, fn_kwargs={"spec": spec, "blocks": blocks}
        )
    remote = is_object_uri(spec)  # files on object storage: each read task fetches its own
    if not remote and is_callable_spec(spec) and not Path(spec).exists():
        ds = import_callable(spec, DataError, what)()
        if not isinstance(ds, ray.data.Dataset):
            raise DataError(f"{what} {spec!r} returned {type(ds).__name__}, not a ray.data.Dataset")
        return ds.map_batches(
            _normalize_batch, batch_format="numpy", fn_kwargs={"source": spec, "seq_len": text.seq_len}
        )
    texts = text_files(spec if remote else Path(spec))
    if texts is not None:
        _check_tokenizer(spec, what, text)
        # One read task per file: rows are read, tokenised and cut into blocks there.
        return ray.data.from_items([asdict(f) for f in texts]).map_batches(
            _read_text_batch, batch_size=1, batch_format="pyarrow", fn_kwargs={"text": text}
        )
    files = parquet_files(spec if remote else Path(spec))
    offsets = np.concatenate([[0], np.cumsum([_parquet(f).metadata.num_rows for f in files])])
    # One read task per file; ids of id-less files follow the files' sorted order.
    items = [{"path": str(f), "offset": int(o)} for f, o in zip(files, offsets[:-1])]
    return ray.data.from_items(items).map_batches(
        _read_parquet_batch, batch_size=1, batch_format="pyarrow", fn_kwargs={"seq_len": text.seq_len}
    )


def _check_spec(spec: str, what: str) -> None:
    problems = check_dataset_spec(spec, what)
    if problems:
        raise DataError(problems[0])


def _check_tokenizer(spec: str, what: str, text: TextOptions) -> None:
    if text.hf_tokenizer is None:
        raise DataError(
            f"{what} {spec} is text and needs a tokenizer: pass --tokenizer (a directory saved by save_pretrained) "
            "or an hf:<dir> teacher whose directory holds its tokenizer files"
        )


SMALL_LOCAL_BYTES = 32 << 20  # local data files up to this size may be read in the driver's process


def read_here(spec: str, what: str = "--dataset", text: TextOptions = TextOptions()) -> dict[str, np.ndarray] | None:
    """Every row of a small dataset, read in this process by the functions load_dataset's read
    tasks run (the same rows, bit for bit): local text or Parquet files of at most
    SMALL_LOCAL_BYTES in all, and the built-in feature datasets. None for the rest (built-in text,
    `module:function`, object storage, bigger files): read those with load_dataset. A small dump
    saves a Ray Data pass (a Ray worker's start and imports: seconds), and needs no Ray to read."""
    _check_spec(spec, what)
    if registry.is_text(spec) or is_object_uri(spec) or (is_callable_spec(spec) and not Path(spec).exists()):
        return None
    if spec in registry.DATASETS:
        return registry.DATASETS[spec].make()
    texts = text_files(Path(spec))
    if texts is not None:
        _check_tokenizer(spec, what, text)
        if _total_bytes(f.path for f in texts) > SMALL_LOCAL_BYTES:
            return None
        return _concat([_read_text_batch(pa.Table.from_pylist([asdict(f)]), text) for f in texts])
    files = parquet_files(Path(spec))
    if _total_bytes(files) > SMALL_LOCAL_BYTES:
        return None
    offsets = np.concatenate([[0], np.cumsum([_parquet(f).metadata.num_rows for f in files])])
    items = [{"path": str(f), "offset": int(o)} for f, o in zip(files, offsets[:-1])]
    return _concat([_read_parquet_batch(pa.Table.from_pylist([item]), text.seq_len) for item in items])


def _total_bytes(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _parquet(path) -> pq.ParquetFile:
    """A Parquet file by path, or by URI (fetched whole)."""
    return pq.ParquetFile(pa.BufferReader(read_bytes(path)) if is_object_uri(path) else path)


def text_part(spec: str, part: int, text: TextOptions) -> dict[str, np.ndarray]:
    """Blocks of one part of a built-in text dataset. Part p holds a contiguous run of files; its
    blocks have ids p * 2**32 + i, so no part needs another's token count."""
    from trainer.inputs.tokenizers import corpus_blocks, tokenizer_from_json

    files = np.array_split(np.array(registry.DATASETS[spec].make(), dtype=object), TEXT_PARTS)[part].tolist()
    input_ids, lengths = corpus_blocks(files, tokenizer_from_json(text.tokenizer_json), text.seq_len)
    ids = (np.int64(part) << np.int64(32)) + np.arange(input_ids.shape[0], dtype=np.int64)
    return {"id": ids, "input_ids": input_ids, "length": lengths, "label": np.full(ids.shape[0], -1, dtype=np.int64)}


def _features_block(batch: dict[str, np.ndarray], spec: str, blocks: int) -> dict[str, np.ndarray]:
    rows = registry.DATASETS[spec].make()
    part = np.array_split(np.arange(rows["id"].shape[0]), blocks)[int(batch["id"][0])]
    return {key: value[part] for key, value in rows.items()}


def _text_block(batch: dict[str, np.ndarray], spec: str, text: TextOptions) -> dict[str, np.ndarray]:
    return text_part(spec, int(batch["id"][0]), text)


def _read_text_batch(batch: pa.Table, text: TextOptions) -> dict[str, np.ndarray]:
    """One text file -> its blocks, in the canonical columns (trainer/inputs/chat.py says how)."""
    from trainer.inputs.chat import MAX_ROW_ID, blocks_of, encode_row, load_tokenizer

    file = TextFile(**{key: batch.column(key)[0].as_py() for key in ("path", "format", "offset")})
    tok = load_tokenizer(text.hf_tokenizer)
    ids, blocks, cuts = [], [], []
    for i, row in enumerate(read_rows(file)):
        where = f"{file.path} row {i}"
        row_id = row.get("id", file.offset + i)
        if not isinstance(row_id, int) or isinstance(row_id, bool) or not 0 <= row_id <= MAX_ROW_ID:
            raise DataError(f"{where}: 'id' must be an integer in 0..{MAX_ROW_ID} (got {row_id!r})")
        kind = row_kind(row, where)
        train_on = text.train_on or ("all" if kind == "text" else "completion")
        if kind == "text" and train_on == "completion":
            raise DataError(f"{where} is plain text, which has no completion: pass --train-on all")
        tokens, target = encode_row(row, kind, tok, train_on, where)
        if not tokens.size:
            raise DataError(f"{where} has no tokens (empty text and no EOS): drop the row or give it text")
        row_blocks, cut = blocks_of(tokens, target, text.seq_len, split=kind == "text")
        ids += [(row_id << 16) + b for b in range(len(row_blocks))]
        blocks += row_blocks
        cuts += [cut] + [0] * (len(row_blocks) - 1)
    n = len(blocks)
    input_ids = np.zeros((n, text.seq_len), dtype=np.int64)
    loss_mask = np.zeros((n, text.seq_len), dtype=np.uint8)
    for i, b in enumerate(blocks):
        input_ids[i, : b.input_ids.shape[0]] = b.input_ids
        loss_mask[i, : b.loss_mask.shape[0]] = b.loss_mask
    return {
        "id": np.asarray(ids, dtype=np.int64),
        "input_ids": input_ids,
        "length": np.array([b.input_ids.shape[0] for b in blocks], dtype=np.int64),
        "loss_mask": loss_mask,
        "cut": np.asarray(cuts, dtype=np.int64),
        "label": np.full(n, -1, dtype=np.int64),
    }


def _read_parquet_batch(batch: pa.Table, seq_len: int) -> dict[str, np.ndarray]:
    path, offset = batch.column("path")[0].as_py(), batch.column("offset")[0].as_py()
    table = _parquet(path).read()
    names = set(table.column_names)
    if "input_ids" in names:
        return _read_parquet_tokens(table, path, offset, seq_len)
    if "features" not in names:
        raise DataError(
            f"parquet file {path} has neither a 'features' column (a list of floats per row) nor 'input_ids' "
            "(a list of token ids per row): add one"
        )
    feats = table.column("features").combine_chunks()
    if not (
        pa.types.is_list(feats.type) or pa.types.is_large_list(feats.type) or pa.types.is_fixed_size_list(feats.type)
    ):
        raise DataError(f"parquet file {path}: 'features' has type {feats.type}; it must be a list of floats per row")
    if feats.null_count:
        raise DataError(f"parquet file {path}: 'features' has null rows; every row needs its features")
    lengths = pc.list_value_length(feats).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or lengths.min() == 0):
        raise DataError(
            f"parquet file {path}: 'features' rows have different or zero lengths; every row needs the same "
            "number of floats"
        )
    n = table.num_rows
    width = int(lengths[0]) if n else 0
    features = pc.list_flatten(feats).to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, width)
    out = {"features": features}
    out["id"] = table.column("id").to_numpy(zero_copy_only=False) if "id" in names else np.arange(offset, offset + n)
    if "label" in names:
        out["label"] = table.column("label").combine_chunks()
    return _normalize_batch(out, source=path)


def _read_parquet_tokens(table: pa.Table, path: str, offset: int, seq_len: int) -> dict[str, np.ndarray]:
    tokens = table.column("input_ids").combine_chunks()
    if not (
        pa.types.is_list(tokens.type) or pa.types.is_large_list(tokens.type) or pa.types.is_fixed_size_list(tokens.type)
    ) or not pa.types.is_integer(tokens.type.value_type):
        raise DataError(f"parquet file {path}: 'input_ids' has type {tokens.type}; it must be a list of ints per row")
    if tokens.null_count:
        raise DataError(f"parquet file {path}: 'input_ids' has null rows; every row needs its tokens")
    lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    rows = [flat[s : s + n] for s, n in zip(starts, lengths)]
    ids = (
        table.column("id").to_numpy(zero_copy_only=False)
        if "id" in table.column_names
        else np.arange(offset, offset + table.num_rows)
    )
    return _normalize_tokens({"id": ids, "input_ids": rows, "length": lengths}, path, seq_len)


def _normalize_tokens(batch: dict, source: str, seq_len: int) -> dict[str, np.ndarray]:
    """Token rows (ragged lists, or [n, w] with optional `length`) -> input_ids [n, seq_len] zero-padded + length."""
    raw = batch["input_ids"]
    if isinstance(raw, np.ndarray) and raw.dtype != object and raw.ndim == 2:
        rows = list(raw)
        lengths = (
            np.asarray(batch["length"], dtype=np.int64)
            if "length" in batch
            else np.full(len(rows), raw.shape[1], dtype=np.int64)
        )
    else:
        rows = [np.asarray(r) for r in raw]
        lengths = np.array([r.shape[0] for r in rows], dtype=np.int64)
    n = len(rows)
    ids = _ids(batch, source)
    input_ids = np.zeros((n, seq_len), dtype=np.int64)
    for i, (row, length) in enumerate(zip(rows, lengths)):
        if row.ndim != 1 or (row.size and row.dtype.kind not in "iu"):
            raise DataError(f"dataset {source}: 'input_ids' of id {ids[i]} is not a flat list of ints")
        if not 1 <= length <= row.shape[0] or length > seq_len:
            if length > seq_len:
                raise DataError(
                    f"dataset {source}: id {ids[i]} has {length} tokens, more than --seq-len {seq_len}: raise "
                    "--seq-len or split the row"
                )
            raise DataError(
                f"dataset {source}: id {ids[i]} has no tokens (or a 'length' beyond its row): every row needs "
                f"1..{seq_len} tokens"
            )
        if np.any(row[:length] < 0):
            raise DataError(f"dataset {source}: id {ids[i]} has negative token ids: token ids must be >= 0")
        input_ids[i, :length] = row[:length]
    return {"id": ids, "input_ids": input_ids, "length": lengths, "label": np.full(n, -1, dtype=np.int64)}


def _ids(batch: dict, source: str) -> np.ndarray:
    ids = np.asarray(batch["id"]) if "id" in batch else None
    if ids is None:
        raise DataError(f"dataset {source} has no 'id' column: function datasets must give each row a unique int id")
    if ids.dtype.kind not in "iu":
        raise DataError(f"dataset {source}: 'id' has dtype {ids.dtype}; ids must be integers")
    return ids.astype(np.int64)


def _normalize_batch(batch: dict, source: str, seq_len: int = LM_SEQ_LEN) -> dict[str, np.ndarray]:
    """Check one batch and convert it to the canonical columns and dtypes."""
    if "input_ids" in batch:
        return _normalize_tokens(batch, source, seq_len)
    if "features" not in batch:
        raise DataError(
            f"dataset {source} has neither a 'features' column (a float array per row) nor 'input_ids' (a "
            "list of token ids per row): add one"
        )
    features = batch["features"]
    if isinstance(features, np.ndarray) and features.dtype == object:
        try:
            features = np.stack([np.asarray(f, dtype=np.float32) for f in features])
        except ValueError:
            raise DataError(
                f"dataset {source}: 'features' rows have different shapes; every row needs the same shape"
            ) from None
    features = np.asarray(features, dtype=np.float32)
    n = features.shape[0]
    if features.ndim < 2:
        features = features.reshape(n, 1)
    ids = _ids(batch, source)
    labels = _labels(batch.get("label"), n, source)
    return {"id": ids, "features": features, "label": labels}


def _labels(raw, n: int, source: str) -> np.ndarray:
    if raw is None:
        return np.full(n, -1, dtype=np.int64)
    if isinstance(raw, (pa.Array, pa.ChunkedArray)):
        if not pa.types.is_integer(raw.type) and not pa.types.is_null(raw.type):
            raise DataError(
                f"dataset {source}: 'label' has type {raw.type}; labels must be integers (null where missing)"
            )
        values = (
            pc.fill_null(raw, -1).to_numpy(zero_copy_only=False)
            if raw.null_count
            else raw.to_numpy(zero_copy_only=False)
        )
        if raw.null_count == 0 and np.any(values < 0):
            raise DataError(f"dataset {source}: 'label' holds negative values; use null for a missing label")
        return np.asarray(values, dtype=np.int64)
    arr = np.asarray(raw)
    if arr.dtype == object:
        arr = np.array([-1 if v is None else v for v in arr])
    if arr.dtype.kind == "f":
        if np.any(np.isfinite(arr) & (arr != np.round(arr))):
            raise DataError(f"dataset {source}: 'label' holds non-integer values; labels must be integers")
        arr = np.where(np.isnan(arr), -1, arr)
    elif arr.dtype.kind not in "iu":
        raise DataError(
            f"dataset {source}: 'label' has dtype {arr.dtype}; labels must be integers (null where missing)"
        )
    return arr.astype(np.int64)


def sample_digest(features: np.ndarray) -> bytes:
    """16-byte BLAKE2b of one sample's input, as FORMAT.md defines it."""
    return hashlib.blake2b(np.ascontiguousarray(features, dtype="<f4").tobytes(), digest_size=16).digest()


def sequence_digest(input_ids: np.ndarray, length: int, loss_mask: np.ndarray | None = None) -> bytes:
    """16-byte BLAKE2b of one sequence sample: its valid token ids as int64 little-endian, then its
    loss mask as uint8 when the data has one."""
    data = np.ascontiguousarray(input_ids[:length], dtype="<i8").tobytes()
    if loss_mask is not None:
        data += np.ascontiguousarray(loss_mask[:length], dtype=np.uint8).tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


def positions_per_sample(batch: dict) -> np.ndarray:
    """Stored positions of each sample of a token batch: its loss mask's ones, else its length."""
    if "loss_mask" in batch:
        return np.asarray(batch["loss_mask"], dtype=np.int64).sum(axis=1)
    return np.asarray(batch["length"], dtype=np.int64)


def is_sequence_batch(batch: dict) -> bool:
    return "input_ids" in batch


def _digest_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if is_sequence_batch(batch):
        masks = batch["loss_mask"] if "loss_mask" in batch else [None] * len(batch["id"])
        parts = [sequence_digest(ids, int(n), m) for ids, n, m in zip(batch["input_ids"], batch["length"], masks)]
    else:
        parts = [sample_digest(f) for f in batch["features"]]
    digests = np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(len(parts), 16)
    # Largest token id per row (-1 for features), so a too-small vocabulary is caught before the teacher runs.
    top = batch["input_ids"].max(axis=1) if is_sequence_batch(batch) else np.full(len(parts), -1, dtype=np.int64)
    length = np.asarray(batch["length"], dtype=np.int64) if is_sequence_batch(batch) else np.zeros(len(parts), np.int64)
    cut = np.asarray(batch["cut"], dtype=np.int64) if "cut" in batch else np.zeros(len(parts), np.int64)
    stored = positions_per_sample(batch) if is_sequence_batch(batch) else np.ones(len(parts), np.int64)
    return {"id": batch["id"], "digest": digests, "max_token": top, "length": length, "cut": cut, "stored": stored}


@dataclass(frozen=True)
class DatasetFingerprint:
    spec: str
    ids: np.ndarray  # sorted
    ids_sha256: str
    inputs_sha256: str
    max_token: int  # largest token id; -1 for feature data
    max_length: int = 0  # tokens in the longest sample; 0 for feature data
    cut_rows: int = 0  # rows longer than seq_len that were cut (text the dump tokenised)
    cut_tokens: int = 0
    num_tokens: int = 0  # tokens of every sample (0 for feature data)
    num_positions: int = 0  # positions to store

    @property
    def num_samples(self) -> int:
        return int(self.ids.shape[0])

    def to_manifest(self) -> dict:
        return {
            "spec": self.spec,
            "num_samples": self.num_samples,
            "ids_sha256": self.ids_sha256,
            "inputs_sha256": self.inputs_sha256,
        }


def fingerprint_dataset(ds: ray.data.Dataset, spec: str) -> DatasetFingerprint:
    """One pass over the dataset: sorted ids, their hash, the hash of the inputs. Checks ids are unique."""
    digested = ds.map_batches(_digest_batch, batch_format="numpy")
    return _fingerprint(digested.iter_batches(batch_size=None, batch_format="numpy"), spec)


def fingerprint_rows(rows: dict[str, np.ndarray], spec: str) -> DatasetFingerprint:
    """fingerprint_dataset of rows in memory (read_here's): the same fingerprint for the same rows."""
    return _fingerprint([_digest_batch(rows)], spec)


def _fingerprint(batches, spec: str) -> DatasetFingerprint:
    ids, digests, max_token, max_length = [], [], -1, 0
    cut, tokens, positions = np.zeros(0, np.int64), 0, 0
    for batch in batches:
        ids.append(batch["id"])
        digests.append(batch["digest"])
        cut = np.concatenate([cut, batch["cut"][batch["cut"] > 0]])
        tokens += int(batch["length"].sum())
        positions += int(batch["stored"].sum())
        if len(batch["max_token"]):
            max_token = max(max_token, int(batch["max_token"].max()))
            max_length = max(max_length, int(batch["length"].max()))
    if not ids or sum(len(i) for i in ids) == 0:
        raise DataError(f"dataset {spec!r} is empty: it needs at least one row")
    all_ids = np.concatenate(ids).astype(np.int64)
    all_digests = np.concatenate(digests)
    order = np.argsort(all_ids, kind="stable")
    all_ids, all_digests = all_ids[order], all_digests[order]
    dup = np.nonzero(np.diff(all_ids) == 0)[0]
    if dup.size:
        raise DataError(f"dataset {spec!r} has duplicate ids (e.g. {all_ids[dup[0]]}): every row needs a unique id")
    return DatasetFingerprint(
        spec=spec,
        ids=all_ids,
        ids_sha256=hashlib.sha256(all_ids.astype("<i8").tobytes()).hexdigest(),
        inputs_sha256=hashlib.sha256(np.ascontiguousarray(all_digests).tobytes()).hexdigest(),
        max_token=max_token,
        max_length=max_length,
        cut_rows=int(cut.shape[0]),
        cut_tokens=int(cut.sum()),
        num_tokens=tokens,
        num_positions=positions,
    )
