"""Students cut from their teacher by depth: keep the decoder layers that matter most, with the
teacher's embeddings, output layer, tokenizer and chat template, then heal them by distillation.

A layer's importance is its block influence (ShortGPT, Men et al. 2024): 1 - the mean cosine
similarity of the hidden state entering it and the one leaving it, over every calibration token; a
layer that barely turns the residual stream is the cheapest to remove. Minitron (NVIDIA) prunes
depth by importance the same way and heals with KD, at a fraction of the tokens a student from
scratch needs.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from logitstore.atomic import atomic_directory
from trainer.errors import ConfigError
from trainer.student.prune_config import MakeStudentConfig

RECORD = "logitstore-student.json"  # how the student was cut, beside its weights


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The state-dict prefix and the ModuleList of the model's decoder blocks: its one list of
    config.num_hidden_layers modules (Llama, Qwen, Mistral: model.layers; GPT-2: transformer.h)."""
    n = model.config.num_hidden_layers
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(found) != 1:
        raise ConfigError(
            [
                f"cannot tell the decoder layers of this {type(model).__name__} ({len(found)} lists of {n} modules): "
                "pass a Llama-, Qwen-, Mistral- or GPT-2-like causal LM"
            ]
        )
    return found[0]


def block_influence(model: nn.Module, rows: list[np.ndarray]) -> np.ndarray:
    """[L] each decoder layer's block influence over the tokens of `rows` (each [T_i] token ids,
    run one at a time: no padding): 1 - mean_t cos(h_in[t], h_out[t])."""
    _, layers = decoder_layers(model)
    sums, count = torch.zeros(len(layers), dtype=torch.float64), 0

    def hook(index: int):
        def record(module, args, kwargs, output) -> None:
            entering = args[0] if args else kwargs["hidden_states"]
            leaving = output[0] if isinstance(output, tuple) else output
            cos = nn.functional.cosine_similarity(entering.float(), leaving.float(), dim=-1)
            sums[index] += cos.sum().double()

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for ids in rows:
                model(torch.as_tensor(ids[None].astype(np.int64)), use_cache=False)
                count += len(ids)
    finally:
        for handle in handles:
            handle.remove()
    return (1.0 - sums / max(count, 1)).numpy()


def most_important(scores: np.ndarray, depth: int) -> list[int]:
    """The `depth` layers of highest score, in the teacher's order (ties: the earlier layer)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:depth])


def cut(teacher: nn.Module, keep: list[int]) -> nn.Module:
    """A fresh model of the teacher's class with only the decoder layers `keep` (in the teacher's
    order), every other weight the teacher's: its config numbers the layers 0..len(keep)-1."""
    from transformers import AutoModelForCausalLM

    prefix, _ = decoder_layers(teacher)
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (sliding, full)
        config.layer_types = [teacher.config.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(config, dtype=next(teacher.parameters()).dtype)
    renumber = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, value in teacher.state_dict().items():
        if not key.startswith(prefix + "."):
            state[key] = value
            continue
        index, rest = key[len(prefix) + 1 :].split(".", 1)
        if int(index) in renumber:
            state[f"{prefix}.{renumber[int(index)]}.{rest}"] = value
    student.load_state_dict(state, strict=True)
    student.tie_weights()
    return student.eval()


def perplexity(model: nn.Module, rows: list[np.ndarray]) -> float:
    """exp of the mean next-token cross-entropy over every position of `rows`."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in rows:
            if len(ids) < 2:
                continue
            x = torch.as_tensor(ids[None].astype(np.int64))
            logits = model(x, use_cache=False).logits[0, :-1].float()
            total += float(nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            count += len(ids) - 1
    return math.exp(total / count) if count else float("nan")


@dataclass(frozen=True)
class MadeStudent:
    out: Path
    kept: list[int]
    teacher_layers: int
    parameters: int
    teacher_parameters: int
    perplexity: dict[str, float]
    seconds: float


def make_student(cfg: MakeStudentConfig) -> MadeStudent:
    """Cut cfg.teacher to the layers --keep-layers names or --depth chooses on --calibration, and save
    it with the teacher's tokenizer files and a record of the cut, whole or not at all."""
    from trainer.inputs.modeldirs import local_dir

    start = time.perf_counter()
    out = Path(cfg.out)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError([f"--out {cfg.out} already holds files: pass --overwrite to replace them, or another --out"])
    teacher_dir = local_dir(cfg.teacher[len("hf:") :])
    teacher = load_lm(teacher_dir)
    total = teacher.config.num_hidden_layers
    rows = _calibration_rows(cfg, teacher_dir) if cfg.calibration else []
    if cfg.keep_layers:
        keep, scores = cfg.layers(), None
        if keep[-1] >= total:
            raise ConfigError([f"--keep-layers {cfg.keep_layers}: the teacher has layers 0..{total - 1}"])
    else:
        if cfg.depth >= total:
            raise ConfigError([f"--depth {cfg.depth}: the teacher has {total} layers; keep fewer"])
        print(f"measuring the importance of {total} layers on {len(rows)} rows ...", file=sys.stderr, flush=True)
        scores = block_influence(teacher, rows)
        keep = most_important(scores, cfg.depth)
    student = cut(teacher, keep)
    ppl = {"teacher": perplexity(teacher, rows), "student": perplexity(student, rows)} if rows else {}
    record = {
        "teacher": cfg.teacher,
        "teacher_layers": total,
        "kept_layers": keep,
        "importance": None if scores is None else "block_influence",
        "block_influence": None if scores is None else [round(float(s), 6) for s in scores],
        "calibration": _calibration_record(cfg, rows),
        "calibration_perplexity": ppl,
        "config": cfg.to_dict(),
    }
    _save(student, teacher_dir, out, record)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return MadeStudent(out, keep, total, count(student), count(teacher), ppl, time.perf_counter() - start)


def load_lm(directory: str) -> nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32).eval()


def _calibration_rows(cfg: MakeStudentConfig, teacher_dir: str) -> list[np.ndarray]:
    """The first --calibration-rows rows (by id) of --calibration, as token ids, tokenised as a dump would."""
    from trainer.inputs.datasets import TextOptions, read_here

    rows = read_here(cfg.calibration, "--calibration", TextOptions(seq_len=cfg.seq_len, hf_tokenizer=teacher_dir))
    if rows is None or "input_ids" not in rows:
        raise ConfigError(
            [
                f"--calibration {cfg.calibration}: pass local text files (JSONL/JSON/Parquet or a datasets directory) "
                "of at most 32 MiB"
            ]
        )
    order = np.argsort(rows["id"], kind="stable")[: cfg.calibration_rows]
    return [rows["input_ids"][i, : int(rows["length"][i])] for i in order]


def _calibration_record(cfg: MakeStudentConfig, rows: list[np.ndarray]) -> dict | None:
    if not rows:
        return None
    return {"spec": cfg.calibration, "rows": len(rows), "tokens": int(sum(len(r) for r in rows))}


def _save(student: nn.Module, teacher_dir: str, out: Path, record: dict) -> None:
    """save_pretrained in the teacher's saved precision, the teacher's tokenizer files and generation
    config, and the record; staged beside --out and renamed, so --out is whole or untouched."""
    from transformers import AutoConfig

    from trainer.inputs.chat import tokenizer_files

    saved = getattr(AutoConfig.from_pretrained(teacher_dir, local_files_only=True), "dtype", None)
    if isinstance(saved, torch.dtype):
        student = student.to(saved)
    with atomic_directory(out) as staging:
        student.save_pretrained(staging)
        for name, data in tokenizer_files(teacher_dir).items():
            (staging / name).write_bytes(data)
        generation = Path(teacher_dir) / "generation_config.json"
        if generation.is_file():
            shutil.copyfile(generation, staging / generation.name)
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
