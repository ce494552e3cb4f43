"""LoRA students (--lora-r): low-rank adapters on an hf: student's linear layers, through peft
(the library torchtune, TRL and DistillKitPlus train them with; its adapter files are what the
ecosystem loads), the base weights frozen. The export holds the adapter (peft's format, which
peft and, with peft installed, plain transformers load onto the base model), or with --merge-lora
the merged model (plain transformers, no peft) with the adapter beside it in adapter/."""

from __future__ import annotations

import copy
from pathlib import Path

import torch.nn as nn

from trainer.errors import ModelError
from trainer.inputs.models import HFCausalLM

ADAPTER_DIR = "adapter"


def apply_lora(model: nn.Module, spec: str, r: int, alpha: float, dropout: float, targets: str) -> nn.Module:
    """Wrap an hf: student's transformers model in peft's LoRA adapters (every linear layer but the
    output layer when `targets` is "", else the named modules); only the adapters train."""
    if not isinstance(model, HFCausalLM):
        raise ModelError(f"--lora-r trains adapters on a Hugging Face student (hf:<dir>); --student {spec} is not one")
    from peft import LoraConfig, get_peft_model

    names = [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=names or "all-linear",
        task_type="CAUSAL_LM",
    )
    try:
        model.model = get_peft_model(model.model, config)
    except ValueError as exc:  # peft: a named module that the model does not have
        raise ModelError(
            f"--lora-targets {targets!r} do not fit --student {spec}: {str(exc).splitlines()[0][:150]}"
        ) from None
    return model


def is_lora(model: nn.Module) -> bool:
    return isinstance(model, HFCausalLM) and model.transformer is not model.model


def save_lora(model: HFCausalLM, directory: Path, merge: bool) -> None:
    """The adapter into `directory`; with `merge`, the merged model there and the adapter in adapter/."""
    if not merge:
        model.model.save_pretrained(directory, safe_serialization=True)
        return
    model.model.save_pretrained(directory / ADAPTER_DIR, safe_serialization=True)
    merged = copy.deepcopy(model.model).merge_and_unload()  # a copy: the training model keeps its adapters
    merged.save_pretrained(directory, safe_serialization=True)
