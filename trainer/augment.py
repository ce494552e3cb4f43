"""Seeded augmentations: the same (input, seed) gives the same augmented input, in the dump's
teacher and in the student's training loop, so stored logits match what the student sees.

An augmentation is `augment(features [B, ...] float tensor, seeds [B] int64 tensor) -> [B, ...]`;
each row's output depends only on that row's input and seed (never on the batch). Built in:
`digits-shift-rotate`; or `package.module:function` with that signature.

Seeds come from splitmix64 of (dump or run seed, sample id, view or epoch): counter-based, so
any worker derives the same seed for a sample without coordination.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from trainer.errors import DataError
from trainer.specs import import_callable, is_callable_spec

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


def digits_shift_rotate(features: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Digits [B, 64] (8x8 in [0, 1]): a rotation of up to 15 degrees, a scale of 0.9-1.1 and a
    shift of up to 1 pixel each way, bilinear, zero outside the image."""
    u = uniforms(seeds, 4).to(features.device, torch.float32)
    angle = (u[:, 0] * 2 - 1) * math.radians(15.0)
    scale = 0.9 + 0.2 * u[:, 1]
    shift = (u[:, 2:] * 2 - 1) * (2.0 / 8.0)  # one pixel of an 8-pixel side, in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    images = features.reshape(-1, 1, 8, 8).float()
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(features.shape).to(features.dtype)


BUILTIN_AUGMENTS: dict[str, Augment] = {"digits-shift-rotate": digits_shift_rotate}


def check_augment_spec(spec: str, flag: str) -> list[str]:
    if spec in BUILTIN_AUGMENTS or is_callable_spec(spec):
        return []
    return [f"{flag} {spec!r} is neither a built-in augmentation ({', '.join(BUILTIN_AUGMENTS)}) nor package.module:function"]


def resolve_augment(spec: str) -> Augment:
    if spec in BUILTIN_AUGMENTS:
        return BUILTIN_AUGMENTS[spec]
    if is_callable_spec(spec):
        return import_callable(spec, DataError, "augmentation")
    raise DataError(check_augment_spec(spec, "--augment")[0])
