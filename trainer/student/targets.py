"""What the teacher stored for a batch's positions, on the training device: made once per batch
(trainer/student/batches.py) and passed whole to every loss and metric."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

# the per-position tensors of TeacherTargets (what rows() selects)
ROW_FIELDS = (
    "topk_index",
    "topk_logit",
    "logsumexp",
    "rest",
    "sample_index",
    "sample_count",
    "topk_count",
    "features",
)


@dataclass(frozen=True)
class TeacherTargets:
    """N positions of a store (a selection of `topk`, `sample` or `hybrid`):

    topk_index    int64   [N, k]  class ids; column 0 is the teacher's top-1
    topk_logit    float32 [N, k]  the teacher's raw logits of those classes
    logsumexp     float32 [N, R]  logsumexp(z / T) over the full vocabulary, one column per T in `temperatures`
    rest          float32 [N, R]  the stored tail mass, for stores of quantized logits (else None)
    sample_index  int64   [N, w]  drawn class ids (sampled selections; count 0 = padding)
    sample_count  int64   [N, w]  how often each was drawn
    topk_count    int64   [N]     adaptive top-k stores: the columns of the head each position holds
                                  (the others are padding: no mass for teacher or student), else None
    features      float32 [N, n, R]  the stored teacher features of n layers (dequantized), when a
                                  student trains on them, else None
    """

    selection: str
    temperatures: tuple[float, ...]
    topk_index: torch.Tensor
    topk_logit: torch.Tensor
    logsumexp: torch.Tensor
    rest: torch.Tensor | None = None
    sample_index: torch.Tensor | None = None
    sample_count: torch.Tensor | None = None
    topk_count: torch.Tensor | None = None
    features: torch.Tensor | None = None

    @property
    def head_mask(self) -> torch.Tensor | None:
        """bool [N, k]: the head's columns that are classes (None: all of them)."""
        if self.topk_count is None:
            return None
        return torch.arange(self.topk_index.shape[1], device=self.topk_index.device) < self.topk_count.unsqueeze(1)

    @staticmethod
    def exact(
        topk_index: torch.Tensor,
        topk_logit: torch.Tensor,
        logsumexp_t: torch.Tensor,
        temperature: float,
        rest_t: torch.Tensor | None = None,
    ) -> TeacherTargets:
        """A top-k store's targets at one temperature: logsumexp_t [N] and rest_t [N] or None."""
        return TeacherTargets(
            "topk",
            (float(temperature),),
            topk_index,
            topk_logit,
            logsumexp_t.unsqueeze(1),
            None if rest_t is None else rest_t.unsqueeze(1),
        )

    @property
    def num_positions(self) -> int:
        return int(self.topk_index.shape[0])

    @property
    def teacher_top1(self) -> torch.Tensor:
        return self.topk_index[:, 0]

    def column(self, temperature: float) -> int:
        for i, t in enumerate(self.temperatures):
            if math.isclose(t, temperature, rel_tol=1e-9):
                return i
        raise ValueError(f"temperature {temperature:g} is not among the targets' {self.temperatures}")

    def at(self, temperature: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logsumexp [N], rest [N] or None) at one temperature."""
        c = self.column(temperature)
        return self.logsumexp[:, c], None if self.rest is None else self.rest[:, c]

    def rows(self, index: torch.Tensor | slice) -> TeacherTargets:
        """The targets of the positions at `index` [M] (or a slice of them: views, no copy)."""
        pick = {name: getattr(self, name) for name in ROW_FIELDS}
        return replace(self, **{name: None if t is None else t[index] for name, t in pick.items()})
