"""Teacher features (FORMAT.md, version 9): the fixed projections and the int8 codec.

A layer's hidden state h [H] per position is stored as y = h P [R], P [H, R] a fixed projection
saved in the store (layout.FEATURE_FILE), y quantized to int8 codes with one float32 scale
per position and layer. Plain numpy: the store knows nothing of torch.
"""

from __future__ import annotations

import hashlib

import numpy as np

from logitstore.layout import Features

CODE_MAX = 127


def orthogonal_projection(width: int, dim: int, seed: int, layer: int = 0) -> np.ndarray:
    """[width, dim] float32 with orthonormal columns, from `seed` and the layer's place j in the
    store's list (FORMAT.md, Appendix A.11)."""
    draws = np.random.default_rng([seed % 2**64, layer]).standard_normal((width, dim))
    q, r = np.linalg.qr(draws)
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)  # the unique Q with R's diagonal positive
    return q.astype(np.float32)


def projections(features: Features) -> list[np.ndarray]:
    """The writer's projection of each stored layer: P_j [H_j, R]."""
    return [orthogonal_projection(w, features.dim, features.seed, j) for j, w in enumerate(features.widths)]


def projection_bytes(matrices: list[np.ndarray]) -> bytes:
    """The projection file: the matrices as float32 little-endian, C order, one after another."""
    return b"".join(np.ascontiguousarray(m, dtype="<f4").tobytes() for m in matrices)


def projection_sha256(matrices: list[np.ndarray]) -> str:
    return hashlib.sha256(projection_bytes(matrices)).hexdigest()


def read_projection(data: bytes, widths: tuple[int, ...], dim: int) -> list[np.ndarray] | None:
    """The matrices [H_j, R] of a projection file, or None when its size is not 4 R sum(H_j)."""
    if len(data) != 4 * dim * sum(widths):
        return None
    flat = np.frombuffer(data, dtype="<f4").astype(np.float32)
    out, at = [], 0
    for width in widths:
        out.append(flat[at : at + width * dim].reshape(width, dim))
        at += width * dim
    return out


def quantize(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y float32 [N, R] -> (codes int8 [N, R], scale float32 [N]): absmax per row."""
    y = np.asarray(y, dtype=np.float32)
    scale = (np.abs(y).max(axis=1) / CODE_MAX if y.shape[1] else np.zeros(y.shape[0])).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.rint(y / safe[:, None]), -CODE_MAX, CODE_MAX).astype(np.int8)
    return codes, scale


def dequantize(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """codes int8 [N, n R], scale float32 [N, n] -> y^ float32 [N, n R] (layer j: columns j R:(j+1) R)."""
    n = scale.shape[1]
    r = codes.shape[1] // max(n, 1)
    return (codes.reshape(codes.shape[0], n, r).astype(np.float32) * scale[:, :, None]).reshape(codes.shape)
