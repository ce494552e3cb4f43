"""Joining data rows with their stored teacher logits, by sample id, one store shard at a time.

The data rows are grouped by the store shard that owns their id (a sort shuffle of the data
only; logits never travel through the shuffle), and each group is joined with that one shard read
from disk. Memory per task is bounded by one shard, and the join is by id, never by row order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ray.data
from ray.data import RandomSeedConfig

from logitstore import StoreReader, read_manifest
from logitstore.planning import plan_from_manifest
from logitstore.shard import pad_samples
from trainer.errors import DataError

_READERS: dict[str, StoreReader] = {}


def _reader(store: str) -> StoreReader:
    # One reader per store per worker process: the manifest is parsed once, one shard cached.
    if store not in _READERS:
        _READERS[store] = StoreReader(store, cache_shards=1)
    return _READERS[store]


def _assign_shard(batch: dict[str, np.ndarray], first_ids: np.ndarray, last_ids: np.ndarray) -> dict[str, np.ndarray]:
    from logitstore import ShardPlan

    shard = ShardPlan(first_ids, last_ids, np.zeros_like(first_ids)).shard_of(batch["id"])
    if np.any(shard < 0):
        missing = batch["id"][shard < 0][:5].tolist()
        raise DataError(f"sample ids {missing} are not in the store: pass the dataset the store was dumped from")
    return {**batch, "shard": shard}


def _join_group(batch: dict[str, np.ndarray], store: str, temperature_index: int | list[int], shuffle: bool,
                seed: int | None) -> dict[str, np.ndarray]:
    reader = _reader(store)
    data = reader.read_shard(int(batch["shard"][0]))
    # Every batch gets the same sample width, whatever width each shard was stored with.
    width = min(reader.manifest.draws, reader.manifest.vocab_size)
    ids = batch["id"]
    rows = np.clip(np.searchsorted(data.sample_id, ids), 0, data.num_samples - 1)
    if not np.array_equal(data.sample_id[rows], ids):
        missing = ids[data.sample_id[rows] != ids][:5].tolist()
        raise DataError(f"sample ids {missing} are not in the store: pass the dataset the store was dumped from")
    # Rows in id order first, whatever order the shuffle delivered them in: with a seed, the same
    # shard then comes out in the same order in every run.
    order = np.argsort(ids, kind="stable")
    if shuffle:
        shard = int(batch["shard"][0])
        order = order[np.random.default_rng(None if seed is None else (seed, shard)).permutation(len(ids))]
    rows = rows[order]
    out = {key: value[order] for key, value in batch.items() if key != "shard"}
    if "input_ids" in batch:
        out.update(_sequence_targets(data, rows, out["length"], out["input_ids"].shape[1], temperature_index, width))
        return out
    views = reader.manifest.num_views
    if not views and not np.all(np.diff(data.position_offsets) == 1):
        raise DataError("this store holds several positions per sample, but the dataset has one input per sample: pass the sequence dataset it was dumped from")
    # Positions of each row: [n] for one per sample, [n, V] for a store of V views per sample.
    at = data.position_offsets[rows][:, None] + np.arange(views) if views else data.position_offsets[rows]
    topk_index = data.topk_index[at].astype(np.int64)
    out.update({
        "topk_index": topk_index,
        "topk_logit": data.topk_logit[at],
        "logsumexp_t": data.logsumexp[at][..., temperature_index],
        "teacher_top1": topk_index[..., 0],
    })
    if data.rest_mass is not None:
        out["rest_t"] = data.rest_mass[at][..., temperature_index]
    if views:
        out["view_seed"] = data.view_seed[at]
    if data.has_samples:
        index, count = pad_samples(data.sample_index[rows], data.sample_count[rows], width)
        out.update({"sample_index": index.astype(np.int64), "sample_count": count.astype(np.int64)})
    return out


def _sequence_targets(data, rows: np.ndarray, lengths: np.ndarray, seq_len: int, temperature_index: int | list[int], width: int) -> dict[str, np.ndarray]:
    """Stored positions of each block, zero-padded to [B, seq_len, ...]; teacher_top1 is -1 on padding."""
    n, k = len(rows), data.top_k
    topk_index = np.zeros((n, seq_len, k), dtype=np.int64)
    topk_logit = np.zeros((n, seq_len, k), dtype=np.float32)
    columns = np.shape(data.logsumexp[:1, temperature_index])[1:]  # () for one temperature, (m,) for a list
    lse = np.zeros((n, seq_len, *columns), dtype=np.float32)
    rest = np.zeros((n, seq_len, *columns), dtype=np.float32) if data.rest_mass is not None else None
    m = width if data.has_samples else 0
    stored = data.sample_index.shape[1] if data.has_samples else 0
    sample_index = np.zeros((n, seq_len, m), dtype=np.int64)
    sample_count = np.zeros((n, seq_len, m), dtype=np.int64)
    for i, row in enumerate(rows):
        span = data.positions_of(int(row))
        count = span.stop - span.start
        if count != int(lengths[i]):
            raise DataError(f"sample {int(data.sample_id[row])} has {int(lengths[i])} tokens but the store holds {count} positions: pass the dataset the store was dumped from")
        topk_index[i, :count] = data.topk_index[span]
        topk_logit[i, :count] = data.topk_logit[span]
        lse[i, :count] = data.logsumexp[span, temperature_index]
        if rest is not None:
            rest[i, :count] = data.rest_mass[span, temperature_index]
        if m:
            sample_index[i, :count, :stored] = data.sample_index[span]
            sample_count[i, :count, :stored] = data.sample_count[span]
    top1 = np.where(np.arange(seq_len) < lengths[:, None], topk_index[:, :, 0], -1)
    out = {"topk_index": topk_index, "topk_logit": topk_logit, "logsumexp_t": lse, "teacher_top1": top1}
    if rest is not None:
        out["rest_t"] = rest
    return {**out, "sample_index": sample_index, "sample_count": sample_count} if m else out


def join_with_store(ds: ray.data.Dataset, store: str, temperature: float | Sequence[float], *, shuffle: bool,
                    seed: int | None = None) -> ray.data.Dataset:
    """Rows of `ds` with their stored top-k, reshuffled on every execution when `shuffle` (in the
    same sequence of orders in every run when `seed` is given: pair it with preserve_order).

    Output columns: the dataset's own, plus topk_index int64 [k], topk_logit float32 [k],
    logsumexp_t float32 (the column for `temperature`, or [m] columns for a list of m
    temperatures), teacher_top1 int64, and rest_t float32 (the stored tail mass, shaped as
    logsumexp_t, for stores with quantized logits) — each with a leading [seq_len] axis for
    sequence datasets (zero-padded after `length`; teacher_top1 -1 there), or a leading [V] axis
    for a store of V augmented views per sample, with view_seed int64 [V].
    """
    manifest = read_manifest(store)
    plan = plan_from_manifest(manifest)
    if isinstance(temperature, (int, float)):
        temperature_index: int | list[int] = manifest.temperature_index(temperature)
    else:
        temperature_index = [manifest.temperature_index(t) for t in temperature]
    joined = ds.map_batches(
        _assign_shard, batch_format="numpy", fn_kwargs={"first_ids": plan.first_ids, "last_ids": plan.last_ids}
    ).groupby("shard", num_partitions=max(1, min(plan.num_shards, 64))).map_groups(
        _join_group,
        batch_format="numpy",
        fn_kwargs={"store": str(store), "temperature_index": temperature_index, "shuffle": shuffle, "seed": seed},
    )
    if not shuffle:
        return joined
    # A new block order on every execution (epoch); with a seed, the same sequence in every run.
    return joined.randomize_block_order(seed=None if seed is None else RandomSeedConfig(seed=seed, reseed_after_execution=True))
