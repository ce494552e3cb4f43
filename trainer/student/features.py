"""Feature distillation from a store's teacher features (FORMAT.md, Teacher features): FitNets'
hints, offline.

A student layer S is paired with a stored teacher layer T (`--feature-map S:T`). Its hidden state
h_s [N, H_s] goes through a learned linear map into the teacher's width (the identity at the
start when the widths agree, as a depth-pruned student's do) and through the store's own fixed
projection P_T [H_T, R], so it lands where the stored y_T = h_T P_T lives; the loss compares the
two there (`--feature-loss mse|cosine`), weighted by `--feature-weight` beside KD and CE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from logitstore import Manifest


@dataclass(frozen=True)
class StoredFeatures:
    """What the store says of its features, for the students: the teacher layers in stored order,
    their widths and the projection of each (P_j [H_j, R], float32)."""

    layers: tuple[int, ...]
    widths: tuple[int, ...]
    projection: tuple[np.ndarray, ...]

    def column(self, layer: int) -> int:
        return self.layers.index(layer)


class FeatureMaps(nn.Module):
    """The learned maps of a student's paired layers into the stored projections:
    h [N, H_s] -> (h W_i^T) P [N, R], W_i [H_T, H_s] (the identity at the start when H_s = H_T)."""

    def __init__(self, pairs: list[tuple[int, int]], student_widths: tuple[int, ...], stored: StoredFeatures) -> None:
        super().__init__()
        self.columns = [stored.column(teacher) for _, teacher in pairs]
        self.maps = nn.ModuleList()
        for width, column in zip(student_widths, self.columns):
            linear = nn.Linear(width, stored.widths[column], bias=False)
            if width == stored.widths[column]:
                nn.init.eye_(linear.weight)
            self.maps.append(linear)
        for i, column in enumerate(self.columns):  # fixed: the store's, not trained, not checkpointed
            self.register_buffer(f"projection_{i}", torch.from_numpy(stored.projection[column]), persistent=False)

    def forward(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """The student's states of each pair [N, H_s] -> [N, R]."""
        return [self.maps[i](h.float()) @ getattr(self, f"projection_{i}") for i, h in enumerate(states)]

    def all_reduce_gradients(self) -> None:
        """Average the maps' gradients over the workers (they are not in the DDP or FSDP wrapper)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for p in self.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()


def feature_loss(student: list[torch.Tensor], teacher: torch.Tensor, columns: list[int], kind: str) -> torch.Tensor:
    """Mean over the pairs of the per-position loss, averaged over the N positions.

    student: per pair [N, R] (FeatureMaps' output); teacher [N, n, R] the stored states y^ of the
    n stored layers; columns: the stored layer of each pair. mse: mean over R of (s - t)^2;
    cosine: 1 - cos(s, t).
    """
    losses = []
    for s, column in zip(student, columns):
        t = teacher[:, column, :].float()
        if kind == "cosine":
            losses.append((1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean())
        else:
            losses.append((s - t).pow(2).mean(dim=1).mean())
    return torch.stack(losses).mean()


def dequantized(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """feature_code int8 [N, n R], feature_scale float32 [N, n] -> y^ float32 [N, n, R]."""
    n = scale.shape[1]
    return codes.float().reshape(codes.shape[0], n, -1) * scale.float().unsqueeze(2)


def stored_features(store: str, manifest: Manifest) -> StoredFeatures:
    """The store's features for the students: their layers, widths and checked projection."""
    from logitstore import StoreReader

    features = manifest.layout.features
    return StoredFeatures(features.layers, features.widths, tuple(StoreReader(store).feature_projection()))
