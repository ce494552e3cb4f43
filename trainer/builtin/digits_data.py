"""The digits rows without torch or an import of scikit-learn (which take ~4 s together in every
fresh Ray worker that reads a block): the 8x8 images are read from the CSV file scikit-learn ships,
exactly as `sklearn.datasets.load_digits` reads it; `load_digits` itself when the file moved."""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

FEW_LABELS_FRACTION = 0.1


def _shipped_csv() -> Path | None:
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    """features float64 [1797, 64] (0..16) and targets int64 [1797], in load_digits' order."""
    path = _shipped_csv()
    if path is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data, digits.target.astype(np.int64)
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def load_split(split: str) -> dict[str, np.ndarray]:
    """Rows of a split as numpy: id int64 [N], features float32 [N, 64] in [0, 1], label int64 [N] (-1 = none)."""
    data, target = _all_digits()
    ids = np.arange(data.shape[0], dtype=np.int64)
    features = (data / 16.0).astype(np.float32)
    labels = target.copy()
    is_eval = ids % 5 == 0
    if split == "eval":
        keep = is_eval
    elif split in ("train", "train-fewlabels"):
        keep = ~is_eval
    else:
        raise ValueError(f"unknown digits split {split!r}")
    if split == "train-fewlabels":
        # A fixed draw, independent of anything but the ids: the same rows keep labels everywhere.
        keep_label = np.random.default_rng(20150309).random(ids.shape[0]) < FEW_LABELS_FRACTION
        labels = np.where(keep_label, labels, -1)
    return {"id": ids[keep], "features": features[keep], "label": labels[keep]}
