"""How one shard's rows become teacher batches without compute on padding.

Token rows are scored longest first, in batches of rows of similar length, each batch cut to its
longest row: a causal teacher's logits at a row's real positions do not depend on what follows
them, so the padding the dataset carries (every row is `seq_len` wide) is never computed. The order
depends only on the shard's rows (length, then id), so a shard's batches are the same whatever the
number of workers or a resume. The scored rows are put back in id order for the shard.
"""

from __future__ import annotations

import numpy as np

# Per-sample arrays of a scored batch; every other array holds one row per stored position.
PER_SAMPLE = ("id", "shard", "positions")


def length_batches(group: dict[str, np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Row indices of each batch: by descending length, ties by ascending id, `batch_size` rows each
    (feature rows, which have no padding, in id order)."""
    n = len(group["id"])
    if "length" in group:
        order = np.lexsort((group["id"], -group["length"].astype(np.int64)))
    else:
        order = np.argsort(group["id"], kind="stable")
    return [order[s : s + batch_size] for s in range(0, n, batch_size)]


def trimmed(group: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The batch of `rows`, its token columns cut to its longest row."""
    batch = {key: value[rows] for key, value in group.items()}
    if "length" in batch and len(rows):
        width = max(1, int(batch["length"].max()))
        for key in ("input_ids", "loss_mask"):
            if key in batch:
                batch[key] = batch[key][:, :width]
    return batch


def in_id_order(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Scored batches (each: per-sample `id`, `shard`, `positions`, and per-position arrays, flat in
    its own sample order) -> one result with samples in ascending id order."""
    joined = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    order = np.argsort(joined["id"], kind="stable")
    counts = joined["positions"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # position rows of the samples in id order: each sample's run start..start+count
    lengths = counts[order]
    run_start = np.repeat(starts[order] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    position_order = run_start + np.arange(int(lengths.sum()))
    return {key: value[order] if key in PER_SAMPLE else value[position_order] for key, value in joined.items()}
