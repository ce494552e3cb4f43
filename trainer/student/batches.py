"""A batch row of the join (trainer/student/join.py) -> tensors on the training device.

The targets arrive flat, one row per stored position in the store's dtypes; they are moved to the
device as they are and widened there (ids to int64 for gather). A sequence batch's positions are
its valid tokens in row-major order, which is the order of `logits[valid]`; a store of views
holds V positions per sample, of which each epoch trains on view (epoch + id) mod V.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from trainer.inputs.augment import Augment, derive_seeds, resolve_augment
from trainer.student.features import dequantized
from trainer.student.targets import TeacherTargets


@dataclass(frozen=True)
class BatchOptions:
    """How a run turns batch rows into training batches."""

    selection: str  # the store's selection: topk, sample or hybrid
    temperatures: tuple[float, ...]  # the targets' logsumexp/rest columns
    views: int = 0  # a store of views: V positions per sample
    augment_spec: str = ""  # replays the views' augmentation, or augments afresh each epoch ("" = none)
    seed: int = 0
    features: bool = False  # a student trains on the store's teacher features

    @cached_property
    def augment(self) -> Augment | None:
        return resolve_augment(self.augment_spec) if self.augment_spec else None


@dataclass(frozen=True)
class Batch:
    ids: torch.Tensor  # int64 [B]
    inputs: torch.Tensor  # features float32 [B, ...] or input_ids int64 [B, T]
    labels: torch.Tensor  # int64 [N], one per position (< 0: none): a classifier's label, or the next token
    valid: torch.Tensor | None  # bool [B, T], the stored positions of a sequence batch (None: one per sample)
    targets: TeacherTargets | None  # N positions (None: the run trains on labels only); across tokenizers M <= N
    shard: torch.Tensor  # int64 [B], the store shard of each sample (for measuring the data order)
    # across tokenizers (trainer/student/crosstok.py): int64 [M], the rows of `labels` (the student's
    # positions) the M targets belong to; None: targets and labels share their rows
    kd_index: torch.Tensor | None = None

    def positions(self, logits: torch.Tensor) -> torch.Tensor:
        """A model's logits in the rows of `labels` and `targets`: [B, V] as they are, [B, T, V] -> [N, V]."""
        return logits if self.valid is None else logits[self.valid]


def _tensor(value: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    array = np.ascontiguousarray(value)
    if not array.flags.writeable:
        # A column read from Arrow is read-only memory; a tensor on it (on the CPU, `.to` keeps the
        # memory) would let an in-place op write there: the tensor gets its own copy.
        array = array.copy()
    t = torch.from_numpy(array).to(device, non_blocking=True)
    return t if dtype is None else t.to(dtype)


def make_batch(row: dict[str, np.ndarray], options: BatchOptions, epoch: int, device: torch.device) -> Batch:
    """One batch row of the join (as iter_batches(batch_size=1) gives it) -> a Batch on `device`."""
    r = {key: value[0] for key, value in row.items()}  # a one-row batch: each column's single entry
    ids = _tensor(r["id"], device, torch.int64)
    targets = _targets(r, options, device) if "topk_index" in r else None
    inputs = (
        _tensor(r["input_ids"], device, torch.int64)
        if "input_ids" in r
        else _tensor(r["features"], device, torch.float32)
    )
    valid = None
    if "input_ids" in r:
        length = _tensor(r["length"], device, torch.int64)
        tokens = torch.arange(inputs.shape[1], device=device).unsqueeze(0) < length.unsqueeze(1)
        next_token = torch.full_like(inputs, -1)
        next_token[:, :-1] = torch.where(tokens[:, 1:], inputs[:, 1:], -1)  # -1 after a block's last token
        # The positions trained: the loss mask's where the data has one (text the dump tokenised).
        valid = tokens & _tensor(r["loss_mask"], device, torch.bool) if "loss_mask" in r else tokens
        labels = next_token[valid]
    else:
        labels = _tensor(r["label"], device, torch.int64)
    if options.views and targets is not None:
        # Each sample trains on one stored view this epoch, its input augmented with that view's seed.
        view = (ids + epoch) % options.views
        at = _tensor(r["offsets"][:-1], device, torch.int64) + view
        targets = targets.rows(at)
        inputs = options.augment(inputs, _tensor(r["view_seed"], device, torch.int64)[at])
    elif options.augment is not None:
        # A fresh augmentation per sample and epoch, the targets those of the un-augmented input.
        inputs = options.augment(inputs, torch.from_numpy(derive_seeds(options.seed, r["id"], epoch + 1)).to(device))
    kd_index = _kd_index(r, valid, device) if "kd_pos" in r and targets is not None else None
    return Batch(ids, inputs, labels, valid, targets, _tensor(r["shard"], device, torch.int64), kd_index)


def _kd_index(r: dict[str, np.ndarray], valid: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Across tokenizers: each target's row among the batch's positions (valid, row-major), from its
    sample and its student position `kd_pos`."""
    sample = np.repeat(np.arange(len(r["offsets"]) - 1), np.diff(r["offsets"]))
    rank = valid.reshape(-1).long().cumsum(0).reshape(valid.shape) - 1
    return rank[_tensor(sample, device, torch.int64), _tensor(r["kd_pos"], device, torch.int64)]


def _targets(r: dict[str, np.ndarray], options: BatchOptions, device: torch.device) -> TeacherTargets:
    optional = {key: _tensor(r[key], device) for key in ("rest",) if key in r}
    if "topk_count" in r:  # an adaptive head
        optional["topk_count"] = _tensor(r["topk_count"], device, torch.int64)
    if options.features:
        optional["features"] = dequantized(_tensor(r["feature_code"], device), _tensor(r["feature_scale"], device))
    if "sample_index" in r:
        optional["sample_index"] = _tensor(r["sample_index"], device, torch.int64)
        optional["sample_count"] = _tensor(r["sample_count"], device, torch.int64)
    return TeacherTargets(
        options.selection,
        options.temperatures,
        topk_index=_tensor(r["topk_index"], device, torch.int64),
        topk_logit=_tensor(r["topk_logit"], device),
        logsumexp=_tensor(r["logsumexp"], device),
        **optional,
    )
