"""Seeded augmentations: the same (input, seed) gives the same augmented input, in the dump's
teacher and in the student's training loop, so stored logits match what the student sees.

An augmentation is `augment(features [B, ...] float tensor, seeds [B] int64 tensor) -> [B, ...]`;
each row's output depends only on that row's input and seed (never on the batch). Built in:
`digits-shift-rotate` (trainer/builtin/digits.py); or `package.module:function` with that signature.

Seeds come from splitmix64 of (dump or run seed, sample id, view or epoch): counter-based, so
any worker derives the same seed for a sample without coordination.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from trainer.errors import DataError
from trainer.inputs import registry
from trainer.inputs.specs import check_augment_spec, import_callable

Augment = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def derive_seeds(seed: int, ids: np.ndarray, salt: np.ndarray | int) -> np.ndarray:
    """int64 seeds of (seed, sample id, salt), elementwise over ids (and salt): the salt is the
    view index at a dump, the epoch in training."""
    with np.errstate(over="ignore"):
        h = splitmix64(splitmix64(np.uint64(seed % 2**64)) ^ np.asarray(ids).astype(np.uint64))
        h = splitmix64(h ^ np.asarray(salt).astype(np.uint64))
    return np.asarray(h, dtype=np.uint64).view(np.int64)


def uniforms(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """`count` uniform floats in [0, 1) per seed, [B] -> [B, count] float64, from splitmix64 streams."""
    base = seeds.detach().cpu().numpy().astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        draws = splitmix64(base[:, None] + np.arange(1, count + 1, dtype=np.uint64)[None, :] * _GOLDEN)
    return torch.from_numpy((draws >> np.uint64(11)).astype(np.float64) / float(1 << 53))


def resolve_augment(spec: str) -> Augment:
    """The augmentation a spec names (checked by specs.check_augment_spec)."""
    if spec in registry.AUGMENTS:
        return registry.AUGMENTS[spec].function()
    problems = check_augment_spec(spec, "--augment")
    if problems:
        raise DataError(problems[0])
    return import_callable(spec, DataError, "augmentation")
