"""A rerun of a complete dump, answered from the store's manifest without starting Ray (light: no
Ray, no transformers; torch only for a teacher built in Python and the device's dtype).

The manifest records the digest of the data's files (`dataset.source_sha256`). When the files are
the same, the identity rebuilt from these arguments, this teacher's weights, this tokenizer and the
fingerprint recorded for those same files is the one the store was committed under (its
`content_sha256`): the store already holds this dump. Anything else (a Ray cluster named by
RAY_ADDRESS, a store without the digest, data only reading tells) goes the usual way.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import torch

from logitstore.errors import StoreError
from logitstore.identity import canonical, content_sha256
from logitstore.manifest import Manifest, read_manifest
from trainer.inputs import registry
from trainer.inputs.sources import source_sha256
from trainer.inputs.specs import HF_PREFIX
from trainer.inputs.tokenizers import Tokenizer, resolve_tokenizer, sha256_text
from trainer.teacher.config import DumpConfig
from trainer.teacher.devices import precision


@dataclass(frozen=True)
class DumpResult:
    manifest: Manifest
    seconds: float
    resumed_shards: int = 0
    tokens_read: int = 0  # tokens of every sample of a token dataset (padding excluded)
    teacher_seconds: float = 0.0  # of `seconds`, the pass that scores and writes the shards
    without_ray: bool = False  # found complete from its manifest and the data's files, Ray never started


def answer_without_ray(cfg: DumpConfig) -> DumpResult | None:
    """The rerun's result when the store already holds this dump (printed as such), else None."""
    start = time.perf_counter()
    finished = complete_already(cfg)
    if finished is None:
        return None
    print_nothing_to_do(cfg)
    return DumpResult(finished, time.perf_counter() - start, len(finished.shards), without_ray=True)


def teacher_record(cfg: DumpConfig, record: dict, on_gpu: bool) -> dict:
    """The manifest's `teacher`: what it is (`record`: spec, weights' fingerprint, parameters) and
    how it ran (a CPU's sums depend on its thread count, so a CPU dump records it)."""
    device = torch.device("cuda" if on_gpu else "cpu")
    record = {**record, "dtype": str(precision(cfg.precision, device)).replace("torch.", ""), "device": device.type}
    if cfg.engine != "hf":  # another engine's kernels: other last bits (absent: hf, as older stores)
        record["engine"] = cfg.engine
        for key in ("tensor_parallel_size", "pipeline_parallel_size"):
            if getattr(cfg, key) > 1:
                record[key] = getattr(cfg, key)
    return {**record, "cpu_threads": cfg.threads_per_worker} if device.type == "cpu" else record


def builtin_tokenizer_sha256(tokenizer: Tokenizer | None) -> str | None:
    text = tokenizer.to_json() if tokenizer is not None else None
    return sha256_text(text) if text else None


def print_nothing_to_do(cfg: DumpConfig) -> None:
    print(
        f"{cfg.out} already holds this exact dump (same arguments, teacher weights and data): nothing to do",
        file=sys.stderr,
    )


def complete_already(cfg: DumpConfig) -> Manifest | None:
    """The store at --out when it already holds exactly this dump, else None (see the module)."""
    if cfg.overwrite or os.environ.get("RAY_ADDRESS"):
        return None
    try:
        manifest = read_manifest(cfg.out)
    except StoreError:
        return None
    recorded = manifest.dataset.get("source_sha256")
    if not isinstance(recorded, str) or cfg.content_differences(manifest.config or {}):
        return None
    if source_sha256(cfg.dataset) != recorded:
        return None
    teacher = _teacher_fingerprint(cfg, manifest.teacher)
    if teacher is None:
        return None
    identity = {
        "layout": manifest.layout.to_json(),
        "config": cfg.content(),
        "teacher": teacher_record(cfg, teacher, torch.cuda.is_available()),
        "dataset": manifest.dataset,
        "tokenizer_sha256": _tokenizer_sha256(cfg),
    }
    return manifest if content_sha256(canonical(identity)) == manifest.content_sha256 else None


def _teacher_fingerprint(cfg: DumpConfig, recorded: dict) -> dict | None:
    """The teacher's fingerprint keys: an hf: teacher's from its files (its parameter count, which
    those files decide, is the recorded one: no transformers to import), a built-in's from its weights."""
    from trainer.inputs.models import hf_files_sha256

    if cfg.teacher.startswith(HF_PREFIX):
        parameters = recorded.get("num_parameters")
        if not isinstance(parameters, int):
            return None
        files = hf_files_sha256(cfg.teacher[len(HF_PREFIX) :])
        return {"spec": cfg.teacher, "weights_sha256": files, "num_parameters": parameters} | {
            "weights_fingerprint": "files"
        }
    from trainer.teacher.source import resolve_teacher

    return resolve_teacher(cfg.teacher).record()


def _tokenizer_sha256(cfg: DumpConfig) -> str | None:
    """The dump's tokenizer identity: of the Hugging Face tokenizer's files for text files (read,
    not loaded), of the built-in tokenizer for built-in text, none otherwise."""
    if cfg.text_files:
        from trainer.inputs.chat import files_sha256, tokenizer_files

        return files_sha256(tokenizer_files(cfg.hf_tokenizer()))
    if registry.is_text(cfg.dataset):
        return builtin_tokenizer_sha256(resolve_tokenizer(cfg.tokenizer or "bytes"))
    return None
