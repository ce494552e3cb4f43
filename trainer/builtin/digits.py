"""The built-in real example: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes).

Split by id (the row's position in `load_digits()`): ids with `id % 5 == 0` are the eval split
(360 rows), the rest the train split (1,437 rows). The few-labels variant keeps the label of a
fixed ~10% of the train rows and nulls the rest.

The teacher (a small CNN) is trained reproducibly on the train split and cached:
    python -m trainer.builtin.digits train-teacher [--out PATH]
It is also trained on first use when the cache is empty (about 10 s on one CPU core).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.builtin.cache import cache_dir, load_weights, save_weights
from trainer.builtin.digits_data import FEW_LABELS_FRACTION, load_split  # noqa: F401 (re-exported)
from trainer.inputs.augment import uniforms

NUM_CLASSES = 10
NUM_FEATURES = 64
TEACHER_VERSION = "v1"


class DigitsCNN(nn.Module):
    """The teacher: two conv layers and an MLP head, ~150k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, NUM_CLASSES)
        self.dropout = nn.Dropout(0.3)

    # the hidden layers' widths: 1 = conv1 (32 x 8 x 8), 2 = conv2 after pooling (64 x 4 x 4), 3 = fc1
    WIDTHS = {1: 32 * 8 * 8, 2: 64 * 4 * 4, 3: 128}

    def forward(self, x: torch.Tensor, layers: tuple[int, ...] | None = None):
        """[B, 64] -> logits [B, 10]; with `layers`, also those layers' outputs, flattened: (logits, [[B, H]])."""
        x = x.reshape(-1, 1, 8, 8)
        h1 = F.relu(self.conv1(x))
        h2 = F.max_pool2d(F.relu(self.conv2(h1)), 2)
        h3 = F.relu(self.fc1(h2.flatten(1)))
        logits = self.fc2(self.dropout(h3))
        if layers is None:
            return logits
        states = {1: h1.flatten(1), 2: h2.flatten(1), 3: h3}
        return logits, [states[layer] for layer in layers]

    def feature_width(self, layer: int) -> int:
        if layer not in self.WIDTHS:
            raise ValueError("its layers are 1 (conv1), 2 (conv2) and 3 (fc1)")
        return self.WIDTHS[layer]


class DigitsMLP(nn.Module):
    """The student: one small hidden layer (64 -> hidden -> 10)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))

    def forward(self, x: torch.Tensor, layers: tuple[int, ...] | None = None):
        """[B, 64] -> logits [B, 10]; with `layers` (only 1: the hidden layer, after its ReLU) also
        (logits, [[B, hidden]])."""
        h = self.net[1](self.net[0](x.reshape(x.shape[0], -1)))
        logits = self.net[2](h)
        return logits if layers is None else (logits, [h for _ in layers])

    def feature_width(self, layer: int) -> int:
        if layer != 1:
            raise ValueError("its one layer is 1 (the hidden layer)")
        return self.net[0].out_features


def student(hidden: int) -> DigitsMLP:
    return DigitsMLP(hidden=hidden)


def shift_rotate(features: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
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


def teacher_cache_path() -> Path:
    return cache_dir() / f"digits-cnn-{TEACHER_VERSION}.pt"


def train_teacher(seed: int = 0, epochs: int = 40) -> DigitsCNN:
    """Train the teacher on the train split with full labels (deterministic on one CPU thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        data = load_split("train")
        x = torch.from_numpy(data["features"])
        y = torch.from_numpy(data["label"])
        model = DigitsCNN()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            model.train()
            for batch in np.array_split(rng.permutation(len(y)), max(1, len(y) // 64)):
                b = torch.from_numpy(batch)
                # Small random shifts make the teacher robust and its soft targets informative.
                xb = torch.roll(x[b].reshape(-1, 8, 8), shifts=tuple(rng.integers(-1, 2, size=2).tolist()), dims=(1, 2))
                loss = F.cross_entropy(model(xb), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        return model.eval()
    finally:
        torch.set_num_threads(threads)


def load_teacher() -> DigitsCNN:
    """The cached teacher, trained and cached first if absent."""
    path = teacher_cache_path()
    if not path.exists():
        print(f"training the digits teacher once (cached at {path}) ...", file=sys.stderr)
        save_weights(train_teacher(), path)
    model = DigitsCNN()
    model.load_state_dict(load_weights(path))
    return model.eval()


def accuracy(model: nn.Module, split: str = "eval") -> float:
    data = load_split(split)
    with torch.no_grad():
        pred = model(torch.from_numpy(data["features"])).argmax(1).numpy()
    has = data["label"] >= 0
    return float((pred[has] == data["label"][has]).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.builtin.digits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train-teacher", help="train the digits teacher and cache it")
    train.add_argument("--out", type=Path, default=None, help="where to save the weights (default: the cache)")
    args = parser.parse_args(argv)
    model = train_teacher()
    out = args.out or teacher_cache_path()
    save_weights(model, out)
    print(f"teacher saved to {out}; eval accuracy {accuracy(model):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
