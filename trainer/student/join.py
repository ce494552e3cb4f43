"""An epoch's data: the dataset's rows joined with their stored targets by sample id, mixed across
store shards, and cut into ready batches.

The order of an epoch (a fresh one every epoch, the same in every run with the same --seed):
 1. the store's shards are taken in a random order drawn from (seed, epoch) and grouped into
    windows of consecutive shards holding at least `window` samples;
 2. the data rows (the inputs only: logits never travel through a shuffle) are grouped by window
    (a sort shuffle); one task per window reads its shards, joins them to the rows by id and
    permutes all the window's samples with (seed, epoch, window);
 3. the permuted samples are cut into batches, one output row per batch, whose targets stay flat
    (one row per stored position, the store's own dtypes, per-sample offsets); the worker expands
    them (trainer/student/batches.py).
So a batch mixes the samples of every shard of its window, whatever the bytes per row, and a join
task holds one window's targets. A store that carries its inputs (format version 5) needs no
dataset: `store_batches` makes the same batches from the store alone (its tokens and loss masks
stand in for the rows), with no shuffle at all. The epoch is the dataset's execution index (Ray
Data executes the dataset once per epoch and counts executions: the counter its own seeded
shuffles use) plus the epoch the current workers started at, which the loop sets in the run's
EpochClock: a restarted worker group (or a rerun after the driver died) counts executions from 0
again, and would otherwise replay the first epochs' orders.
Without shuffling (evaluation), each window is one shard, in id order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import ray
import ray.data

from logitstore import Manifest, ShardData, StoreReader
from trainer.errors import DataError
from trainer.inputs.datasets import positions_per_sample
from trainer.student.crosstok import TextTokenizer, align_window


@dataclass(frozen=True)
class JoinSpec:
    """How a dataset meets its store: which store, which targets to carry, batching and order."""

    store: str
    manifest: Manifest
    temperatures: tuple[float, ...]  # the logsumexp / rest columns to carry; () = no targets (labels only)
    batch_size: int
    seed: int
    window: int  # samples shuffled together; 0 = no shuffle: one shard per window, samples in id order
    clock: Any = None  # an EpochClock actor (the run's): the epoch its workers started at; None = 0
    # a student of another tokenizer (trainer/student/crosstok.py): its tokenizer's spec; "" = the store's
    student_tokenizer: str = ""
    features: bool = False  # carry the store's teacher features (a student trains on them)

    @cached_property
    def plan(self):
        return self.manifest.plan()

    @property
    def shards_per_window(self) -> int:
        return max(1, -(-self.window // self.manifest.layout.shard_size)) if self.window else 1

    def windows(self, epoch: int) -> list[np.ndarray]:
        """The shard indices of each window of `epoch`, in the order the epoch visits them."""
        n = len(self.manifest.shards)
        order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(n) if self.window else np.arange(n)
        w = self.shards_per_window
        return [order[i : i + w] for i in range(0, n, w)]


def join_with_store(ds: ray.data.Dataset, spec: JoinSpec) -> ray.data.Dataset:
    """The rows of `ds` as batches (one row per batch) in the epoch's order, with their stored
    targets when `spec.temperatures` is not empty. Columns of a batch row:

      id int64 [B], label int64 [B], features [B, ...] or input_ids [B, T] + length [B],
      shard int64 [B] (the store shard of each sample), offsets int64 [B+1] (positions of sample i:
      rows offsets[i]:offsets[i+1] of the per-position arrays), and per position, in the store's
      dtypes: topk_index [P, k], topk_logit [P, k], logsumexp [P, R] and rest [P, R] (one column
      per temperature of the spec), sample_index / sample_count [P, w], view_seed [P].
    """
    num_windows = len(spec.windows(0))
    return (
        ds.map_batches(_assign_window, batch_format="numpy", fn_kwargs={"spec": spec})
        .groupby("window", num_partitions=max(1, min(num_windows, 64)))
        .map_groups(_join_window, batch_format="numpy", fn_kwargs={"spec": spec})
    )


def store_batches(spec: JoinSpec) -> ray.data.Dataset:
    """The batches join_with_store makes, from a store that carries its inputs alone: one task per
    window reads its shards, takes the rows from their tokens, and cuts them as a join task does."""
    n = len(spec.windows(0))
    return ray.data.range(n, override_num_blocks=n).map_batches(
        _store_window, batch_size=1, batch_format="numpy", fn_kwargs={"spec": spec}
    )


def store_rows(data: ShardData, seq_len: int, shard: int | np.ndarray = -1) -> dict[str, np.ndarray]:
    """A store's samples as dataset rows (canonical token columns), from their stored tokens."""
    n, tokens = data.num_samples, data.tokens
    lengths = np.diff(tokens.offsets)
    valid = np.arange(seq_len) < lengths[:, None]
    input_ids = np.zeros((n, seq_len), dtype=np.int64)
    loss_mask = np.zeros((n, seq_len), dtype=np.uint8)
    input_ids[valid] = tokens.input_ids
    loss_mask[valid] = tokens.loss_mask
    return {
        "id": data.sample_id,
        "input_ids": input_ids,
        "length": lengths,
        "loss_mask": loss_mask,
        "label": np.full(n, -1, dtype=np.int64),
        "shard": np.broadcast_to(np.asarray(shard, dtype=np.int64), (n,)).copy(),
    }


def _store_window(batch: dict[str, np.ndarray], spec: JoinSpec) -> dict[str, np.ndarray]:
    window, epoch = int(batch["id"][0]), _execution_epoch(spec)
    reader = _reader(spec)
    shards = sorted(int(j) for j in spec.windows(epoch)[window])  # id order, as a join task sorts its rows
    parts = reader.read_shards(shards)  # on object storage, the window's shards fetched at once
    data = ShardData.concat(parts)
    shard_of = np.repeat(shards, [p.num_samples for p in parts])
    if spec.student_tokenizer:  # the samples re-tokenised for the student, the targets cut to the aligned positions
        rows, data, _ = align_window(data, *_cross_tokenizers(spec))
        rows["shard"] = shard_of[np.searchsorted(np.concatenate([p.sample_id for p in parts]), rows["id"])]
    else:
        rows = store_rows(data, spec.manifest.layout.inputs.seq_len, shard_of)
    return _cut_window(rows, data if spec.temperatures else None, spec, window, epoch)


_TOKENIZERS: dict[tuple[str, str, str], tuple[TextTokenizer, TextTokenizer]] = {}


def _cross_tokenizers(spec: JoinSpec) -> tuple[TextTokenizer, TextTokenizer]:
    """The store's tokenizer and the student's, loaded once per worker process."""
    key = (spec.store, spec.manifest.content_sha256, spec.student_tokenizer)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = (TextTokenizer.of_store(_reader(spec)), TextTokenizer(spec.student_tokenizer))
    return _TOKENIZERS[key]


def batch_rows(ds: ray.data.Dataset, batch_size: int) -> ray.data.Dataset:
    """The rows of `ds` without a store, as batch rows in the dataset's order (evaluation on labels only)."""
    return ds.map_batches(_as_batch_row, batch_size=batch_size, batch_format="numpy")


def _as_batch_row(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rows = {**rows, "shard": np.full(len(rows["id"]), -1, dtype=np.int64)}
    return {key: _column([value]) for key, value in rows.items()}


@ray.remote(num_cpus=0)
class EpochClock:
    """The epoch a run's current workers started at (0, or the epoch of the checkpoint they resumed
    from); the workers set it before their first batch, the join's tasks read it."""

    def __init__(self) -> None:
        self.start = 0

    def set(self, epoch: int) -> None:
        self.start = int(epoch)

    def get(self) -> int:
        return self.start


def _execution_epoch(spec: JoinSpec) -> int:
    """The epoch this task's execution of the dataset belongs to (see the module docstring)."""
    start = ray.get(spec.clock.get.remote()) if spec.clock is not None else 0
    return start + int(ray.data.DataContext.get_current()._execution_idx)


def _assign_window(batch: dict[str, np.ndarray], spec: JoinSpec) -> dict[str, np.ndarray]:
    epoch = _execution_epoch(spec)
    shard = spec.plan.shard_of(batch["id"])
    if np.any(shard < 0):
        missing = batch["id"][shard < 0][:5].tolist()
        raise DataError(f"sample ids {missing} are not in the store: pass the dataset the store was dumped from")
    window_of = np.empty(len(spec.manifest.shards), dtype=np.int64)
    for w, shards in enumerate(spec.windows(epoch)):
        window_of[shards] = w
    return {**batch, "shard": shard, "window": window_of[shard], "epoch": np.full(len(shard), epoch, dtype=np.int64)}


_READERS: dict[tuple[str, str], StoreReader] = {}


def _reader(spec: JoinSpec) -> StoreReader:
    # One reader per store per worker process, from the manifest the driver parsed (keyed by its
    # content too: a store dumped again at the same path in a long-lived session is another store).
    key = (spec.store, spec.manifest.content_sha256)
    if key not in _READERS:
        _READERS[key] = StoreReader(spec.store, manifest=spec.manifest, cache_shards=1)
    return _READERS[key]


def _join_window(rows: dict[str, np.ndarray], spec: JoinSpec) -> dict[str, np.ndarray]:
    """One window: its rows joined with their targets, permuted, cut into batch rows."""
    window, epoch = int(rows["window"][0]), int(rows["epoch"][0])
    # Rows in id order first, whatever order the shuffle delivered them in, so that a seed gives
    # the same order in every run.
    order = np.argsort(rows["id"], kind="stable")
    rows = {key: value[order] for key, value in rows.items() if key not in ("window", "epoch")}
    return _cut_window(rows, _targets(rows, spec) if spec.temperatures else None, spec, window, epoch)


def _cut_window(
    rows: dict[str, np.ndarray], targets: ShardData | None, spec: JoinSpec, window: int, epoch: int
) -> dict[str, np.ndarray]:
    """A window's rows (in id order) and their targets, permuted with (seed, epoch, window) and cut
    into batch rows."""
    n = len(rows["id"])
    order = np.random.default_rng([spec.seed, epoch, window]).permutation(n) if spec.window else np.arange(n)
    batches = [order[s : s + spec.batch_size] for s in range(0, n, spec.batch_size)]
    out = {key: [value[b] for b in batches] for key, value in rows.items()}
    if targets is not None:
        for b in batches:
            picked = targets.select(b)
            for key, value in _flat_targets(picked, spec).items():
                out.setdefault(key, []).append(value)
    return {key: _column(values) for key, values in out.items()}


def _column(values: list[np.ndarray]) -> np.ndarray:
    """One entry per batch (their shapes may differ: Ray Data stores them as variable-shaped tensors)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _targets(rows: dict[str, np.ndarray], spec: JoinSpec) -> ShardData:
    """The stored targets of `rows` (sorted by id), one sample per row, checked against the rows."""
    try:
        targets = _reader(spec).lookup(rows["id"])
    except KeyError as exc:
        raise DataError(f"{exc.args[0]}: pass the dataset the store was dumped from") from None
    _check_positions(rows, targets, spec.manifest.num_views)
    return targets


def _check_positions(rows: dict[str, np.ndarray], targets: ShardData, views: int) -> None:
    counts = np.diff(targets.position_offsets)
    if "input_ids" in rows:
        wanted = positions_per_sample(rows)
        bad = np.nonzero(counts != wanted)[0]
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"sample {int(rows['id'][i])} has {int(wanted[i])} positions to train but the store holds "
                f"{int(counts[i])}: pass the dataset the store was dumped from"
            )
    elif views and np.any(counts != views):  # the shard rules forbid it: a reader checks them
        raise DataError(f"a store of {views} views per sample holds another number of positions: dump it again")
    elif not views and np.any(counts != 1):
        raise DataError(
            "this store holds several positions per sample, but the dataset has one input per sample: pass "
            "the sequence dataset it was dumped from"
        )


def _flat_targets(data: ShardData, spec: JoinSpec) -> dict[str, np.ndarray]:
    """A batch's targets, flat, with only the temperature columns the run trains at."""
    columns = [spec.manifest.temperature_index(t) for t in spec.temperatures]
    out = {
        "offsets": data.position_offsets,
        "topk_index": data.topk_index,
        "topk_logit": data.topk_logit,
        "logsumexp": np.ascontiguousarray(data.logsumexp[:, columns]),
    }
    for name, array in data.extras.items():
        if name.startswith("feature_") and not spec.features:  # no student reads them: not carried
            continue
        out["rest" if name == "rest_mass" else name] = (
            np.ascontiguousarray(array[:, columns]) if name == "rest_mass" else array
        )
    return out
