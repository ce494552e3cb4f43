"""Batches of similar length cut to their longest row, and the scored rows put back in id order."""

from __future__ import annotations

import numpy as np

from trainer.teacher.batching import in_id_order, length_batches, trimmed


def token_group(lengths: list[int], width: int = 12) -> dict[str, np.ndarray]:
    n = len(lengths)
    ids = np.arange(n, dtype=np.int64) * 7 + 3
    input_ids = np.zeros((n, width), dtype=np.int64)
    for i, length in enumerate(lengths):
        input_ids[i, :length] = ids[i] * 100 + np.arange(length)
    return {"id": ids, "shard": np.zeros(n, np.int64), "length": np.array(lengths), "input_ids": input_ids}


def fake_score(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a scorer returns: per sample, `length` positions of rows that name their token."""
    valid = np.arange(batch["input_ids"].shape[1]) < batch["length"][:, None]
    tokens = batch["input_ids"][valid]
    return {
        "id": batch["id"],
        "shard": batch["shard"],
        "positions": batch["length"],
        "topk_logit": np.stack([tokens, tokens + 1], axis=1).astype(np.float32),
    }


def test_batches_are_longest_first_ties_by_id_and_cut_to_their_longest_row():
    group = token_group([3, 9, 1, 9, 5, 2, 7])
    batches = length_batches(group, 3)
    assert [group["length"][b].tolist() for b in batches] == [[9, 9, 7], [5, 3, 2], [1]]
    assert group["id"][batches[0]].tolist() == sorted(group["id"][batches[0][:2]].tolist()) + [group["id"][6]]
    assert [trimmed(group, b)["input_ids"].shape[1] for b in batches] == [9, 5, 1]


def test_scored_batches_come_back_in_id_order_with_their_own_positions():
    lengths = [3, 9, 1, 9, 5, 2, 7, 4]
    group = token_group(lengths)
    whole = fake_score(group)
    for size in (1, 2, 3, 8):
        parts = [fake_score(trimmed(group, b)) for b in length_batches(group, size)]
        got = in_id_order(parts)
        assert got.keys() == whole.keys()
        for key in whole:
            np.testing.assert_array_equal(got[key], whole[key])


def test_feature_rows_keep_id_order():
    group = {"id": np.array([5, 1, 3]), "shard": np.zeros(3, np.int64), "features": np.eye(3)}
    assert [b.tolist() for b in length_batches(group, 2)] == [[1, 2], [0]]
    assert trimmed(group, np.array([1, 2]))["features"].shape == (2, 3)
