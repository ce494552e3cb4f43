"""The built-in language-model example: byte-level GPTs on the standard library's sources.

The teacher (`stdlib-gpt`, 0.8M parameters) is trained reproducibly on `stdlib-small`:
    python -m trainer.lm.example train-teacher [--steps 600] [--out PATH]
and cached (LOGITSTORE_CACHE, else ~/.cache/logitstore); also trained on first use. The student
(`stdlib-gpt-student`) is a much smaller GPT of the same vocabulary.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.cache import cache_dir
from trainer.digits import save_teacher
from trainer.lm.corpus import corpus_files
from trainer.lm.gpt import GPT, GPTConfig
from trainer.lm.tokenization import ByteTokenizer, corpus_blocks

TEACHER = GPTConfig(vocab_size=256, seq_len=128, width=128, depth=4, heads=4)
STUDENT = GPTConfig(vocab_size=256, seq_len=128, width=48, depth=2, heads=2)
TEACHER_VERSION = "v1"
TRAIN_FILES = 40  # the stdlib-small train split


def teacher_cache_path() -> Path:
    return cache_dir() / f"stdlib-gpt-{TEACHER_VERSION}.pt"


def _blocks(split: str, files: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, lengths = corpus_blocks(corpus_files(split, files), ByteTokenizer(), TEACHER.seq_len)
    return torch.from_numpy(ids), torch.from_numpy(lengths)


def next_token_loss(model: torch.nn.Module, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    logits = model(ids)[:, :-1]
    targets = ids[:, 1:].masked_fill(torch.arange(1, ids.shape[1]) >= lengths.unsqueeze(1), -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


@torch.no_grad()
def perplexity(model: torch.nn.Module, dataset: str = "stdlib-small-eval") -> float:
    """Per-token perplexity over exactly the blocks of the built-in text dataset students are evaluated on."""
    from trainer.data import TEXT_PARTS, TextOptions, text_part

    parts = [text_part(dataset, p, TextOptions()) for p in range(TEXT_PARTS)]
    ids = torch.from_numpy(np.concatenate([p["input_ids"] for p in parts]))
    lengths = torch.from_numpy(np.concatenate([p["length"] for p in parts]))
    model.eval()
    total = count = 0.0
    for start in range(0, ids.shape[0], 64):
        b_ids, b_len = ids[start:start + 64], lengths[start:start + 64]
        n = int((b_len - 1).clamp(min=0).sum())
        total += float(next_token_loss(model, b_ids, b_len)) * n
        count += n
    return math.exp(total / count)


def train_teacher(steps: int = 600, seed: int = 0, batch_size: int = 32) -> GPT:
    torch.manual_seed(seed)
    ids, lengths = _blocks("train", TRAIN_FILES)
    model = GPT(TEACHER)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        pick = torch.from_numpy(rng.integers(0, ids.shape[0], size=batch_size))
        loss = next_token_loss(model, ids[pick], lengths[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return model.eval()


def load_teacher() -> GPT:
    path = teacher_cache_path()
    if not path.exists():
        print(f"training the stdlib-gpt teacher once (cached at {path}; a few CPU minutes) ...", file=sys.stderr)
        save_teacher(train_teacher(), path)
    model = GPT(TEACHER)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.lm.example", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train-teacher", help="train the stdlib-gpt teacher and cache it")
    train.add_argument("--steps", type=int, default=600)
    train.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    model = train_teacher(args.steps)
    out = args.out or teacher_cache_path()
    save_teacher(model, out)
    print(f"teacher saved to {out}; eval perplexity {perplexity(model):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
