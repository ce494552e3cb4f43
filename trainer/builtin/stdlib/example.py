"""The built-in language-model example: GPTs on the standard library's sources.

Teachers, each trained reproducibly on `stdlib-small` and cached (LOGITSTORE_CACHE, else
~/.cache/logitstore); also trained on first use:
    stdlib-gpt           byte-level (V=256), 0.8M parameters, ~3 CPU minutes
    stdlib-gpt-bpe8192   BPE tokenizer `bpe:8192` (V=8192), the store benchmarks' teacher
    stdlib-gpt-bpe32k    BPE tokenizer `bpe:32768` (V=32768), a large-vocabulary variant
    python -m trainer.builtin.stdlib.example train-teacher [--teacher NAME] [--steps N] [--out PATH]
Each has a student of its vocabulary, `<teacher>-student`, a much smaller GPT. A dump with a BPE
teacher must tokenise with the same tokenizer: `--tokenizer bpe:8192` (or bpe:32768).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.builtin.cache import cache_dir, load_weights, save_weights
from trainer.builtin.stdlib.corpus import corpus_files
from trainer.builtin.stdlib.gpt import GPT, GPTConfig
from trainer.inputs.tokenizers import corpus_blocks, resolve_tokenizer

TEACHER = GPTConfig(vocab_size=256, seq_len=128, width=128, depth=4, heads=4)
STUDENT = GPTConfig(vocab_size=256, seq_len=128, width=48, depth=2, heads=2)
TEACHER_VERSION = "v1"
TRAIN_FILES = 40  # the stdlib-small train split


@dataclass(frozen=True)
class LMTeacher:
    name: str
    tokenizer: str  # a --tokenizer spec
    teacher: GPTConfig
    student: GPTConfig
    steps: int  # training steps of the cached teacher


TEACHERS = {
    t.name: t
    for t in (
        LMTeacher("stdlib-gpt", "bytes", TEACHER, STUDENT, 600),
        LMTeacher(
            "stdlib-gpt-bpe8192", "bpe:8192", replace(TEACHER, vocab_size=8192), replace(STUDENT, vocab_size=8192), 600
        ),
        LMTeacher(
            "stdlib-gpt-bpe32k",
            "bpe:32768",
            replace(TEACHER, vocab_size=32768),
            replace(STUDENT, vocab_size=32768),
            300,
        ),
    )
}


def teacher_cache_path(name: str = "stdlib-gpt") -> Path:
    return cache_dir() / f"{name}-{TEACHER_VERSION}.pt"


def _blocks(split: str, files: int, tokenizer: str = "bytes") -> tuple[torch.Tensor, torch.Tensor]:
    ids, lengths = corpus_blocks(corpus_files(split, files), resolve_tokenizer(tokenizer), TEACHER.seq_len)
    return torch.from_numpy(ids), torch.from_numpy(lengths)


def next_token_loss(model: torch.nn.Module, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    logits = model(ids)[:, :-1]
    targets = ids[:, 1:].masked_fill(torch.arange(1, ids.shape[1]) >= lengths.unsqueeze(1), -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


@torch.no_grad()
def perplexity(model: torch.nn.Module, dataset: str = "stdlib-small-eval", tokenizer: str = "bytes") -> float:
    """Per-token perplexity over exactly the blocks of the built-in text dataset students are evaluated on."""
    from trainer.inputs.datasets import TEXT_PARTS, TextOptions, text_part

    options = TextOptions(tokenizer_json=resolve_tokenizer(tokenizer).to_json())
    parts = [text_part(dataset, p, options) for p in range(TEXT_PARTS)]
    ids = torch.from_numpy(np.concatenate([p["input_ids"] for p in parts]))
    lengths = torch.from_numpy(np.concatenate([p["length"] for p in parts]))
    model.eval()
    total = count = 0.0
    for start in range(0, ids.shape[0], 64):
        b_ids, b_len = ids[start : start + 64], lengths[start : start + 64]
        n = int((b_len - 1).clamp(min=0).sum())
        total += float(next_token_loss(model, b_ids, b_len)) * n
        count += n
    return math.exp(total / count)


def train_teacher(steps: int = 600, seed: int = 0, batch_size: int = 32, name: str = "stdlib-gpt") -> GPT:
    spec = TEACHERS[name]
    torch.manual_seed(seed)
    ids, lengths = _blocks("train", TRAIN_FILES, spec.tokenizer)
    model = GPT(spec.teacher)
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


def load_teacher(name: str = "stdlib-gpt") -> GPT:
    """The cached teacher `name`, trained and cached first if absent."""
    spec = TEACHERS[name]
    path = teacher_cache_path(name)
    if not path.exists():
        print(f"training the {name} teacher once (cached at {path}; a few CPU minutes) ...", file=sys.stderr)
        save_weights(train_teacher(spec.steps, name=name), path)
    model = GPT(spec.teacher)
    model.load_state_dict(load_weights(path))
    return model.eval()


def teacher_architecture(name: str) -> GPT:
    """The untrained teacher `name` (replicas of a dump load the driver's weights into it)."""
    return GPT(TEACHERS[name].teacher)


def student(name: str) -> GPT:
    """The small student GPT of teacher `name`'s vocabulary, freshly initialised."""
    return GPT(TEACHERS[name].student)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.builtin.stdlib.example",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train-teacher", help="train the stdlib-gpt teacher and cache it")
    train.add_argument("--teacher", choices=sorted(TEACHERS), default="stdlib-gpt")
    train.add_argument("--steps", type=int, default=None, help="default: the cached teacher's step count")
    train.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    spec = TEACHERS[args.teacher]
    model = train_teacher(args.steps or spec.steps, name=args.teacher)
    out = args.out or teacher_cache_path(args.teacher)
    save_weights(model, out)
    print(f"teacher saved to {out}; eval perplexity per token {perplexity(model, tokenizer=spec.tokenizer):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
