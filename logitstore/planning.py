"""Deterministic shard plans: the same ids and shard size always give the same shards."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from logitstore.errors import ShardDataError


@dataclass(frozen=True)
class ShardPlan:
    """Shard j owns the sample ids in [first_ids[j], last_ids[j]] and holds counts[j] samples."""

    first_ids: np.ndarray
    last_ids: np.ndarray
    counts: np.ndarray

    @property
    def num_shards(self) -> int:
        return int(self.first_ids.shape[0])

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """Shard index of each id; -1 for ids that fall outside every shard."""
        ids = np.asarray(ids, dtype=np.int64)
        j = np.searchsorted(self.first_ids, ids, side="right") - 1
        inside = (j >= 0) & (ids <= self.last_ids[np.clip(j, 0, None)])
        return np.where(inside, j, -1)


def plan_shards(sorted_ids: np.ndarray, shard_size: int) -> ShardPlan:
    """Cut sorted unique ids into consecutive runs of `shard_size` (the last may be shorter)."""
    ids = np.asarray(sorted_ids, dtype=np.int64)
    if ids.size == 0:
        raise ShardDataError("the dataset is empty: nothing to dump")
    if shard_size < 1:
        raise ShardDataError(f"shard size must be >= 1, got {shard_size}")
    if ids.size > 1 and not np.all(np.diff(ids) > 0):
        raise ShardDataError("sample ids must be sorted and unique to plan shards")
    starts = np.arange(0, ids.size, shard_size)
    ends = np.minimum(starts + shard_size, ids.size)
    return ShardPlan(first_ids=ids[starts], last_ids=ids[ends - 1], counts=(ends - starts).astype(np.int64))
