"""Where trained built-in teachers and tokenizers are cached: $LOGITSTORE_CACHE, else ~/.cache/logitstore."""

from __future__ import annotations

from pathlib import Path

import torch

from logitstore.atomic import atomic_output
from trainer.settings import cache_dir

__all__ = ["cache_dir", "load_weights", "save_weights"]


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """A model's state_dict, atomically: concurrent first uses never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as fh:
        torch.save(model.state_dict(), fh)


def load_weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
