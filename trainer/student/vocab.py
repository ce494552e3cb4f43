"""Students whose output width differs from the store's vocabulary (padded vocabularies: a
Qwen2.5-7B teacher has 152,064 rows, its 0.5B-3B students 151,936). Such a student trains when
every class id it meets fits its width: the stored ids, the labels and the token inputs. The
teacher's mass on ids it cannot represent lies in the tail (the rest bucket of the losses), never
in a stored id: a stored id, label or token at or beyond the width is an error naming it, never
truncated. The driver checks what it can up front (the widths, the tokenizer, the first shard);
each worker checks every batch it trains or evaluates on."""

from __future__ import annotations

import numpy as np
import torch

from logitstore import Manifest, ShardData
from trainer.errors import DataError, ModelError


def check_width(width: int, manifest: Manifest, spec: str, store: str) -> None:
    """Up front: a student of `width` outputs against the store (its top-k, its tokenizer)."""
    vocab = manifest.vocab_size
    if width == vocab:
        return
    if manifest.top_k >= width:
        raise ModelError(
            f"--student {spec} outputs {width} classes but the store's teacher has {vocab} and store {store} "
            f"holds {manifest.top_k} ids per position: use a student with {vocab} outputs"
        )
    tokens = manifest.tokenizer.vocab_size if manifest.tokenizer is not None else None
    if tokens is not None and width < tokens:
        raise ModelError(
            f"--student {spec} outputs {width} classes but the store's tokenizer has {tokens} tokens: a student "
            f"of a padded vocabulary needs at least as many outputs as the tokenizer has tokens"
        )


def check_shard(data: ShardData, width: int, spec: str, store: str, vocab_size: int) -> None:
    """Up front: the first shard's stored ids and tokens fit `width` (the workers check the rest)."""
    index, count = data.topk_index, data.extras.get("topk_count")
    if count is not None:  # adaptive heads: padding columns are not classes
        index = np.where(np.arange(index.shape[1]) < count[:, None], index, 0)
    problem = _first_too_wide(index, data.extras.get("sample_index"), width)
    if problem is None and data.tokens is not None:
        problem = _first_at_or_beyond(data.tokens.input_ids, width, "token")
    if problem is not None:
        raise DataError(
            f"store {store}: {problem}, beyond what --student {spec} outputs ({width} classes): use a student with "
            f"{vocab_size} outputs, the store's vocabulary"
        )


def check_batch(batch, width: int, spec: str) -> None:
    """Every id a batch (trainer/student/batches.py Batch) feeds student `spec` of `width` outputs fits it."""
    targets = batch.targets
    problem = None
    if targets is not None:
        index = targets.topk_index
        if targets.head_mask is not None:  # adaptive heads: padding columns are not classes
            index = torch.where(targets.head_mask, index, 0)
        problem = _first_too_wide(index, targets.sample_index, width)
    if problem is None:
        problem = _first_at_or_beyond(batch.labels, width, "label")
    if problem is None and not torch.is_floating_point(batch.inputs):
        problem = _first_at_or_beyond(batch.inputs, width, "token")
    if problem is not None:
        ids = batch.ids.tolist()
        raise DataError(
            f"samples {ids[:3]}{'...' if len(ids) > 3 else ''}: {problem}, beyond what --student {spec} outputs "
            f"({width} classes): use a student with as many outputs as the store's vocabulary, or data whose ids fit"
        )


def _first_too_wide(topk_index, sample_index, width: int) -> str | None:
    return _first_at_or_beyond(topk_index, width, "stored id") or (
        None if sample_index is None else _first_at_or_beyond(sample_index, width, "stored id")
    )


def _first_at_or_beyond(values, width: int, what: str) -> str | None:
    """'<what> <id> at position i' for the first value >= width, else None (tensors or arrays)."""
    flat = values.reshape(-1)
    over = (flat >= width).nonzero() if isinstance(flat, torch.Tensor) else np.nonzero(np.asarray(flat) >= width)[0]
    if len(over) == 0:
        return None
    i = int(over.reshape(-1)[0])
    return f"{what} {int(flat[i])} (entry {i})"


def tail_mass(data: ShardData, manifest: Manifest, temperature: float) -> float:
    """The teacher's mean mass at `temperature` outside its stored ids over a shard's positions: an
    upper bound of the mass on ids a narrower student cannot represent (the store keeps the tail
    only as a whole)."""
    column = manifest.temperature_index(temperature)
    if "rest_mass" in data.extras:
        return float(np.mean(data.extras["rest_mass"][:, column]))
    z = data.topk_logit.astype(np.float64) / temperature - data.logsumexp[:, column : column + 1]
    head = np.exp(z)
    count = data.extras.get("topk_count")
    if count is not None:
        head = np.where(np.arange(head.shape[1]) < count[:, None], head, 0.0)
    return float(np.mean(np.clip(1.0 - head.sum(axis=1), 0.0, 1.0)))
