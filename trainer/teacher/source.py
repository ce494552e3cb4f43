"""The teacher as the dump's driver knows it: what identifies it in the manifest, its output width,
and how each replica gets its weights.

A teacher built in Python (a built-in, `package.module:function`) is small: the driver builds it,
fingerprints its state_dict and ships the weights to the replicas through Ray's object store. An
`hf:<dir>` teacher may be a 7B model: the driver never builds it. Its identity is the SHA-256 of its
config and weight files, its shapes come from its config (built on the meta device), and each
replica loads it from the directory in the dump's precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trainer.errors import DataError, ModelError
from trainer.inputs.models import (
    build_model,
    feature_widths,
    hf_files_sha256,
    hf_model_facts,
    probe_width,
    weights_sha256,
)
from trainer.inputs.specs import HF_PREFIX


@dataclass(frozen=True)
class TeacherSource:
    spec: str
    weights_sha256: str  # of the state_dict, or of the files when module is None (FORMAT.md, Fingerprints)
    num_parameters: int
    module: torch.nn.Module | None  # built on the driver; None: each replica loads the hf: directory
    vocab_size: int | None = None  # known from an hf: config; else probed on the data
    max_positions: int | None = None
    hidden_size: int = 0  # an hf: teacher's hidden states' width and layer count (its config)
    num_layers: int = 0

    @property
    def from_files(self) -> bool:
        return self.module is None

    def record(self) -> dict:
        """The manifest's fingerprint keys of the teacher."""
        record = {"spec": self.spec, "weights_sha256": self.weights_sha256, "num_parameters": self.num_parameters}
        return {**record, "weights_fingerprint": "files"} if self.from_files else record

    def width(self, rows: Callable[[], dict[str, np.ndarray]], tokens: bool) -> int:
        """The teacher's output width (V): a teacher built here is run on a few real rows of the
        dataset (`rows()`); an hf: one's comes from its config, once the data is known to be
        tokens (`tokens`: the fingerprint saw token ids), without reading the data again."""
        if self.module is not None:
            return probe_width(self.module, rows(), "--teacher", self.spec)
        if not tokens:
            raise DataError(
                f"--teacher {self.spec} is a language model and reads token ids, but the dataset holds features: "
                "give text or token data"
            )
        return int(self.vocab_size)

    def feature_widths(self, layers: tuple[int, ...]) -> tuple[int, ...]:
        """--hidden-layers: each layer's width per position (a teacher built here says it; an hf:
        one's config does)."""
        if self.module is not None:
            return feature_widths(self.module, layers, "--teacher", self.spec)
        bad = [layer for layer in layers if layer > self.num_layers]
        if bad:
            raise ModelError(
                f"--hidden-layers {bad[0]}: --teacher {self.spec} has hidden states 0..{self.num_layers} (0 = the "
                "embeddings): choose layers in that range"
            )
        return tuple(self.hidden_size for _ in layers)

    def check_length(self, max_length: int, dataset: str) -> None:
        """A sample longer than the positions the teacher embeds fails deep in its forward pass."""
        if self.max_positions is not None and max_length > self.max_positions:
            raise DataError(
                f"--dataset {dataset} has samples of {max_length} tokens but the teacher embeds at most "
                f"{self.max_positions} positions: use --seq-len {self.max_positions} or less"
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}


def resolve_teacher(spec: str) -> TeacherSource:
    """Everything the driver needs of `--teacher`, building only what is small."""
    if spec.startswith(HF_PREFIX):
        facts = hf_model_facts(spec, "--teacher")
        return TeacherSource(
            spec,
            hf_files_sha256(spec[len(HF_PREFIX) :]),
            facts.num_parameters,
            None,
            facts.vocab_size,
            facts.max_positions,
            facts.hidden_size,
            facts.num_layers,
        )
    model = build_model(spec, "--teacher")
    return TeacherSource(spec, weights_sha256(model), sum(p.numel() for p in model.parameters()), model)
