"""One dataclass per job. Field metadata `help` becomes the CLI's --help; `validate()` lists every problem."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from logitstore.errors import StoreError
from logitstore.lock import LOCK_NAME
from logitstore.manifest import MANIFEST_NAME, read_manifest
from logitstore.writer import is_store_dir
from trainer.augment import check_augment_spec
from trainer.data import BUILTIN_TEXT, LM_SEQ_LEN, check_dataset_spec
from trainer.lm.tokenization import check_tokenizer_spec
from trainer.losses import LOSS_KINDS
from trainer.models import check_model_spec


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


def _check_out_dir(path: str, flag: str) -> list[str]:
    p = Path(path)
    if p.exists() and not p.is_dir():
        return [f"{flag} {path} is a file: pass a directory path"]
    parent = next((a for a in [p, *p.parents] if a.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK):
        return [f"{flag} {path} is not writable (no write permission on {parent}): choose a writable path"]
    return []


# The dump arguments that decide a store's bytes (not workers, batch size or precision on CPU):
# a rerun with the same ones resumes an unfinished dump, or finds a finished one complete.
CONTENT_FIELDS = ("teacher", "dataset", "top_k", "temperatures", "format", "selection", "draws", "sample_temperature",
                  "seed", "shard_size", "tokenizer", "seq_len", "index_codec", "value_codec", "value_bits", "views", "augment")


@dataclass
class DumpConfig:
    """Run a teacher once over a dataset and write its top-k logits into a sharded store."""

    teacher: str = _help("built-in model (digits-cnn, stdlib-gpt), hf:<dir> (a Hugging Face causal LM saved in a local directory), or package.module:function returning a torch.nn.Module", default="")
    dataset: str = _help("built-in dataset (digits, digits-fewlabels, digits-eval; text: stdlib, stdlib-eval, stdlib-small, stdlib-small-eval), a Parquet file/directory (with 'features', or 'input_ids' for token data), or package.module:function returning a ray.data.Dataset", default="")
    out: str = _help("directory of the store to write", default="")
    top_k: int = _help("classes stored per position, by descending teacher logit", default=5)
    temperatures: tuple[float, ...] = _help("temperatures whose log-normalisers are recorded (comma-separated); students may train at any of them", default=(1.0, 2.0, 4.0))
    format: str = _help("store backend: zarr or arrow", default="zarr")
    index_codec: str = _help("how class ids are stored: plain (by descending logit) or delta (sorted by id, as gaps: ~1/3 smaller at large vocabularies, lossless; readers get the top-1 in column 0 and the rest by id)", default="plain")
    value_codec: str = _help("how logits are stored: float32 (exact) or logq (gaps to the top-1 quantized to --value-bits through a temperature-aware compander, plus the tail mass per temperature from the exact logits; ~2 bytes per entry at k=64 and a KL distortion of ~3e-5 nats at 8 bits on the LM example)", default="float32")
    value_bits: int = _help("bits per quantized logit for --value-codec logq (1..16)", default=8)
    selection: str = _help("what is stored per position: topk (the exact top-k), sample (also --draws tokens drawn from the teacher at --sample-temperature, as ids with counts: unbiased KD), hybrid (exact top-k head plus --draws tokens drawn from the renormalised tail)", default="topk")
    draws: int = _help("tokens drawn per position for --selection sample or hybrid", default=12)
    sample_temperature: float = _help("temperature the draws are made at (must be among --temperatures; students train at it)", default=1.0)
    seed: int = _help("seed of the draws and of the augmented views (each sample's depend only on it and the sample id)", default=0)
    views: int = _help("augmented views per sample (0 = the inputs as they are): the teacher scores each view, and the store keeps each view's seed so train_student replays the same augmentation for the student, a different view each epoch", default=0)
    augment: str = _help("the augmentation of --views: built-in digits-shift-rotate (up to 15 degrees, 0.9-1.1 scale, 1 pixel shift), or package.module:function(features, seeds) -> features, deterministic per (row, seed)", default="")
    tokenizer: str = _help("for built-in text datasets: bytes (vocabulary 256), bpe:N (byte-level BPE of vocabulary N trained on the stdlib train split, cached), or a tokenizer.json path such as another store's; saved in the store", default="bytes")
    seq_len: int = _help("tokens per block: built-in text is packed into blocks of this length; token rows of a user dataset may not be longer", default=LM_SEQ_LEN)
    batch_size: int = _help("samples per teacher batch", default=256)
    workers: int = _help("teacher actors (one GPU each when the cluster has GPUs)", default=1)
    threads_per_worker: int = _help("CPU threads of each teacher actor on CPU clusters (0: the cluster's CPUs / --workers)", default=0)
    shard_size: int = _help("samples per shard (memory of a writer or reader is bounded by one shard)", default=1024)
    precision: str = _help("teacher precision: auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, fp16", default="auto")
    overwrite: bool = _help("replace a complete store already at --out", default=False)

    def validate(self) -> list[str]:
        problems = []
        for flag, value in (("--teacher", self.teacher), ("--dataset", self.dataset), ("--out", self.out)):
            if not value:
                problems.append(f"{flag} is required")
        if self.teacher:
            problems += check_model_spec(self.teacher, "--teacher")
        if self.dataset:
            problems += check_dataset_spec(self.dataset, "--dataset")
        if self.top_k < 1:
            problems.append(f"--top-k must be >= 1, got {self.top_k}")
        problems += check_tokenizer_spec(self.tokenizer)
        if self.tokenizer != "bytes" and self.dataset and self.dataset not in BUILTIN_TEXT:
            problems.append(f"--tokenizer applies to the built-in text datasets ({', '.join(BUILTIN_TEXT)}) only; tokenise your own data before the dump (Parquet 'input_ids')")
        if self.seq_len < 2:
            problems.append(f"--seq-len must be >= 2, got {self.seq_len}")
        if not self.temperatures or any(not (math.isfinite(t) and t > 0) for t in self.temperatures):
            problems.append(f"--temperatures must be positive numbers, got {','.join(map(str, self.temperatures))}")
        elif len(set(self.temperatures)) != len(self.temperatures):
            problems.append("--temperatures lists a temperature twice")
        if self.selection not in ("topk", "sample", "hybrid"):
            problems.append(f"--selection must be topk, sample or hybrid, got {self.selection!r}")
        elif self.selection != "topk":
            if not 1 <= self.draws <= 65535:
                problems.append(f"--draws must be in 1..65535, got {self.draws}")
            if self.sample_temperature not in self.temperatures:
                problems.append(f"--sample-temperature {self.sample_temperature:g} must be one of --temperatures ({','.join(f'{t:g}' for t in self.temperatures)})")
        if self.format not in ("zarr", "arrow"):
            problems.append(f"--format must be zarr or arrow, got {self.format!r}")
        if self.index_codec not in ("plain", "delta"):
            problems.append(f"--index-codec must be plain or delta, got {self.index_codec!r}")
        if self.value_codec not in ("float32", "logq"):
            problems.append(f"--value-codec must be float32 or logq, got {self.value_codec!r}")
        elif self.value_codec == "logq" and not 1 <= self.value_bits <= 16:
            problems.append(f"--value-bits must be in 1..16, got {self.value_bits}")
        if not 0 <= self.views <= 65535:
            problems.append(f"--views must be in 0..65535, got {self.views}")
        elif self.views and not self.augment:
            problems.append("--views needs --augment (what makes the views differ): e.g. --augment digits-shift-rotate")
        elif self.augment and not self.views:
            problems.append("--augment applies to the stored views: pass --views V as well")
        if self.augment:
            problems += check_augment_spec(self.augment, "--augment")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"--precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        for flag, value in (("--batch-size", self.batch_size), ("--workers", self.workers), ("--shard-size", self.shard_size)):
            if value < 1:
                problems.append(f"{flag} must be >= 1, got {value}")
        if self.threads_per_worker < 0:
            problems.append(f"--threads-per-worker must be >= 0, got {self.threads_per_worker}")
        if self.out:
            problems += _check_out_dir(self.out, "--out")
            out = Path(self.out)
            if (out / MANIFEST_NAME).exists() and not self.overwrite:
                problems += self._check_existing_store(out)
            elif out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not is_store_dir(out):
                problems.append(f"--out {self.out} is a non-empty directory that is not a store: choose an empty or new directory")
        return problems

    def _check_existing_store(self, out: Path) -> list[str]:
        """A complete store at --out is fine only for a rerun of the very same dump (then it is a no-op)."""
        try:
            recorded = read_manifest(out).config
        except StoreError as exc:
            return [f"--out {self.out}: {exc}"]
        mine = json.loads(json.dumps(self.to_dict()))
        differ = [f for f in CONTENT_FIELDS if recorded.get(f) != mine.get(f)]
        if differ:
            return [f"a complete store made with other arguments (they differ in: {', '.join(differ)}) already exists at {self.out}: pass --overwrite to replace it, or choose another --out"]
        return []

    def to_dict(self) -> dict:
        return asdict(self)


# What one student of a multi-student run (--variants) may set for itself; the rest is shared.
VARIANT_FIELDS = ("student", "lr", "weight_decay", "temperature", "alpha", "loss", "jsd_beta")


@dataclass
class TrainConfig:
    """Distil a student from a logit store (Ray Train), never running the teacher."""

    store: str = _help("store written by jobs.dump_logits over --dataset", default="")
    dataset: str = _help("training data (same forms as dump_logits --dataset); must be the data the store was dumped from", default="")
    eval_dataset: str = _help("held-out data for eval_accuracy (optional)", default="")
    eval_store: str = _help("store dumped over --eval-dataset, for teacher_agreement (optional)", default="")
    student: str = _help("built-in model (digits-mlp, digits-mlp-tiny, digits-mlp-wide: 16, 8 and 64 hidden units) or package.module:function returning a torch.nn.Module", default="")
    output: str = _help("directory for metrics.json, config.json and the checkpoint", default="")
    epochs: int = _help("passes over the training data", default=30)
    batch_size: int = _help("samples per optimiser step on each worker", default=64)
    lr: float = _help("AdamW learning rate (cosine-annealed over the epochs)", default=0.01)
    weight_decay: float = _help("AdamW weight decay", default=1e-4)
    temperature: float = _help("KD temperature; must be one the store recorded", default=4.0)
    alpha: float = _help("loss = alpha * KD + (1 - alpha) * CE; 0 = labels only, 1 = KD only", default=0.9)
    augment: str = _help("augment the student's training inputs: with a store of views (dump_logits --views) its own augmentation is replayed from the stored seeds (a different view each epoch; leave this empty or name the same one); with a plain store, a fresh augmentation each epoch against the un-augmented teacher's targets (inconsistent)", default="")
    loss: str = _help("KD divergence over the stored top-k + rest bucket: kl (forward, Hinton), reverse-kl, or jsd (generalised Jensen-Shannon, see --jsd-beta); sample/hybrid stores support kl only", default="kl")
    jsd_beta: float = _help("beta of --loss jsd: beta * KL(p||m) + (1 - beta) * KL(q||m), m = beta * p + (1 - beta) * q; in (0, 1)", default=0.5)
    variants: str = _help("train several students in this one run from one read of the store (each batch feeds all): a JSON list of objects, each overriding some of " + ", ".join(VARIANT_FIELDS) + "; the students share the data, epochs, batch size and --seed (the same init and data order as a run of each alone)", default="")
    eval_every: int = _help("evaluate every N epochs (0 = after the last epoch only)", default=0)
    checkpoint_every: int = _help("checkpoint every N epochs (the last epoch is always checkpointed)", default=1)
    checkpoint_every_steps: int = _help("also checkpoint every N optimiser steps within an epoch (0 = off)", default=0)
    max_failures: int = _help("restarts from the latest checkpoint after a worker dies (Ray Train FailureConfig; -1 = unlimited)", default=3)
    workers: int = _help("Ray Train workers", default=1)
    cpus_per_worker: float = _help("CPUs per training worker; 0 = auto (leave room for the data pipeline)", default=0.0)
    seed: int = _help("seed for the student's initialisation and the data order", default=0)
    overwrite: bool = _help("replace a finished run already in --output", default=False)

    def validate(self) -> list[str]:
        problems = []
        for flag, value in (("--store", self.store), ("--dataset", self.dataset), ("--student", self.student), ("--output", self.output)):
            if not value:
                problems.append(f"{flag} is required")
        manifest = None
        if self.store:
            try:
                manifest = read_manifest(self.store)
            except StoreError as exc:
                problems.append(f"--store: {exc}")
        problems += self._student_problems(manifest)
        variants, variant_problems = self._parse_variants()
        problems += variant_problems
        for i, variant in enumerate(variants):
            mine = [f"--variants[{i}]: {p}" for p in replace(self, variants="", **variant)._student_problems(manifest)
                    if p not in problems and not p.endswith(" is required")]
            problems += mine
        if self.augment:
            problems += check_augment_spec(self.augment, "--augment")
            if self.dataset in BUILTIN_TEXT:
                problems.append(f"--augment applies to inputs of features; {self.dataset} is text: leave --augment out")
        if manifest is not None and manifest.views and self.augment and self.augment != manifest.views["augment"]:
            problems.append(f"--augment {self.augment} differs from the augmentation of the store's views ({manifest.views['augment']}): leave --augment out to replay the store's")
        if self.eval_store:
            if not self.eval_dataset:
                problems.append("--eval-store needs --eval-dataset (the data it was dumped from)")
            try:
                if read_manifest(self.eval_store).views:
                    problems.append(f"--eval-store {self.eval_store} holds augmented views; evaluation is on the inputs as they are: dump the eval data without --views")
            except StoreError as exc:
                problems.append(f"--eval-store: {exc}")
        if self.dataset:
            problems += check_dataset_spec(self.dataset, "--dataset")
        if self.eval_dataset:
            problems += check_dataset_spec(self.eval_dataset, "--eval-dataset")
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size), ("--workers", self.workers)):
            if value < 1:
                problems.append(f"{flag} must be >= 1, got {value}")
        if self.checkpoint_every < 1:
            problems.append(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if self.checkpoint_every_steps < 0:
            problems.append(f"--checkpoint-every-steps must be >= 0 (0 = off), got {self.checkpoint_every_steps}")
        if self.max_failures < -1:
            problems.append(f"--max-failures must be >= -1 (-1 = unlimited), got {self.max_failures}")
        if self.eval_every < 0:
            problems.append(f"--eval-every must be >= 0, got {self.eval_every}")
        if self.cpus_per_worker < 0:
            problems.append(f"--cpus-per-worker must be >= 0 (0 = auto), got {self.cpus_per_worker}")
        if self.output:
            problems += _check_out_dir(self.output, "--output")
            if (Path(self.output) / "metrics.json").exists() and not self.overwrite:
                problems.append(f"{self.output} already holds a finished run (metrics.json): pass --overwrite to replace it, or choose another --output")
        return problems

    def _student_problems(self, manifest) -> list[str]:
        """The checks of what each student of a run may set for itself (VARIANT_FIELDS)."""
        problems = []
        if manifest is not None and math.isfinite(self.temperature):
            try:
                manifest.temperature_index(self.temperature)
            except ValueError:
                recorded = ", ".join(f"{t:g}" for t in manifest.temperatures)
                problems.append(f"--temperature {self.temperature:g} was not recorded in the store (recorded: {recorded}): pick one of those, or dump again with it in --temperatures")
            else:
                drawn_at = manifest.selection.get("temperature")
                if manifest.draws and drawn_at != self.temperature:
                    problems.append(f"--temperature {self.temperature:g} differs from the temperature the store's {manifest.selection['kind']} draws were made at ({drawn_at:g}): train at --temperature {drawn_at:g}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"--temperature must be positive, got {self.temperature}")
        if self.student:
            problems += check_model_spec(self.student, "--student")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"--alpha must be in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.loss not in LOSS_KINDS:
            problems.append(f"--loss must be one of {', '.join(LOSS_KINDS)}, got {self.loss!r}")
        elif self.loss != "kl" and manifest is not None and manifest.draws and self.alpha > 0:
            problems.append(f"--loss {self.loss} needs the teacher's exact top-k, but this store holds {manifest.selection['kind']} draws (an estimate of forward KL): use --loss kl")
        if self.loss == "jsd" and not 0.0 < self.jsd_beta < 1.0:
            problems.append(f"--jsd-beta must be in (0, 1), got {self.jsd_beta}")
        return problems

    def _parse_variants(self) -> tuple[list[dict], list[str]]:
        if not self.variants:
            return [], []
        try:
            variants = json.loads(self.variants)
        except json.JSONDecodeError as exc:
            return [], [f"--variants is not valid JSON ({exc.msg} at character {exc.pos}): pass a list of objects such as '[{{\"lr\": 0.01}}, {{\"lr\": 0.003}}]'"]
        if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
            return [], ["--variants must be a non-empty JSON list of objects, one per student"]
        problems = []
        hints = {f.name: f.type for f in fields(self)}
        for i, variant in enumerate(variants):
            for key in list(variant):
                name = key.replace("-", "_")
                if name not in VARIANT_FIELDS:
                    problems.append(f"--variants[{i}]: {key!r} cannot differ between the students of one run: use one of {', '.join(VARIANT_FIELDS)}")
                    variant.pop(key)
                    continue
                value = variant.pop(key)
                if hints[name] == "float" and isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
                    try:
                        value = float(value)
                    except ValueError:
                        pass
                ok = isinstance(value, str) if hints[name] == "str" else isinstance(value, (int, float)) and not isinstance(value, bool)
                if not ok:
                    problems.append(f"--variants[{i}]: {key} must be {'a string' if hints[name] == 'str' else 'a number'}, got {value!r}")
                    continue
                variant[name] = float(value) if hints[name] == "float" else value
        return variants, problems

    def students(self) -> list["TrainConfig"]:
        """One config per student of this run: this one, or one per --variants entry (validated first)."""
        variants, _ = self._parse_variants()
        return [replace(self, variants="", **v) for v in variants] or [self]

    def to_dict(self) -> dict:
        return asdict(self)
