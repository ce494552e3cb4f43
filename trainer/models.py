"""Models by name: built-in ones, `hf:<dir>` (a Hugging Face causal LM saved in a local directory),
or `package.module:function` returning a torch.nn.Module."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from trainer import digits
from trainer.errors import ModelError
from trainer.specs import import_callable, is_callable_spec


def _lm_models() -> dict[str, Callable[[], nn.Module]]:
    from trainer.lm import example
    from trainer.lm.gpt import GPT

    models: dict[str, Callable[[], nn.Module]] = {}
    for name, spec in example.TEACHERS.items():
        models[name] = lambda name=name: example.load_teacher(name)  # trained on stdlib-small and cached
        models[f"{name}-student"] = lambda spec=spec: GPT(spec.student)
    return models


BUILTIN_MODELS: dict[str, Callable[[], nn.Module]] = {
    **_lm_models(),
    "digits-cnn": digits.load_teacher,  # the trained, cached teacher
    "digits-mlp": lambda: digits.DigitsMLP(hidden=16),
    "digits-mlp-tiny": lambda: digits.DigitsMLP(hidden=8),
    "digits-mlp-wide": lambda: digits.DigitsMLP(hidden=64),
}


HF_PREFIX = "hf:"


class HFCausalLM(nn.Module):
    """A `transformers` causal LM from a local directory, as input_ids [B, T] -> logits [B, T, V].

    Never touches the hub (local_files_only) and never runs code from the directory. Blocks are
    right-padded, so with causal attention no attention mask is needed for the valid positions.
    """

    def __init__(self, path: str, *, pretrained: bool = True) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if pretrained:
            self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        else:  # the architecture only; the weights come from the driver
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _check_hf_dir(spec: str, what: str) -> list[str]:
    path = Path(spec[len(HF_PREFIX):])
    if not (path / "config.json").is_file():
        return [f"{what} {spec!r}: {path} is not a saved Hugging Face model (no config.json): pass the directory save_pretrained wrote"]
    try:
        import transformers  # noqa: F401
    except ImportError:
        return [f"{what} {spec!r} needs the transformers package: pip install 'logitstore[hf]'"]
    return []


def check_model_spec(spec: str, what: str) -> list[str]:
    """Problems with a model spec, found without building the model."""
    if spec in BUILTIN_MODELS:
        return []
    if spec.startswith(HF_PREFIX):
        return _check_hf_dir(spec, what)
    if not is_callable_spec(spec):
        return [f"{what} {spec!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}), hf:<dir>, nor package.module:function"]
    try:
        import_callable(spec, ModelError, what)
    except ModelError as exc:
        return [str(exc)]
    return []


# Architectures of built-in models whose builder loads trained weights, for replicas that
# receive those weights from the driver instead.
def _lm_architectures() -> dict[str, Callable[[], nn.Module]]:
    from trainer.lm import example
    from trainer.lm.gpt import GPT

    return {name: (lambda spec=spec: GPT(spec.teacher)) for name, spec in example.TEACHERS.items()}


BUILTIN_ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {"digits-cnn": digits.DigitsCNN, **_lm_architectures()}


def build_model(spec: str, what: str = "--model", *, pretrained: bool = True) -> nn.Module:
    """Build the model a spec names. pretrained=False skips loading a built-in's trained weights."""
    if spec.startswith(HF_PREFIX):
        problems = _check_hf_dir(spec, what)
        if problems:
            raise ModelError(problems[0])
        try:
            model = HFCausalLM(spec[len(HF_PREFIX):], pretrained=pretrained)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{what} {spec!r} cannot be loaded ({str(exc).splitlines()[0]}): check the directory's files") from None
    elif not pretrained and spec in BUILTIN_ARCHITECTURES:
        model = BUILTIN_ARCHITECTURES[spec]()
    elif spec in BUILTIN_MODELS:
        model = BUILTIN_MODELS[spec]()
    elif is_callable_spec(spec):
        model = import_callable(spec, ModelError, what)()
    else:
        raise ModelError(check_model_spec(spec, what)[0])
    if not isinstance(model, nn.Module):
        raise ModelError(f"{what} {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def weights_sha256(model: nn.Module) -> str:
    """Fingerprint of a model's weights, as FORMAT.md defines it."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}\0{t.dtype}\0{list(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_input(batch: dict) -> torch.Tensor:
    """What a model gets from a canonical batch: float features, or int64 token ids [B, T]."""
    if "input_ids" in batch:
        return torch.tensor(np.asarray(batch["input_ids"]), dtype=torch.int64)
    return torch.tensor(np.asarray(batch["features"]), dtype=torch.float32)


def output_width(model: nn.Module, batch: dict) -> int:
    """Number of classes the model outputs for a canonical batch (vocabulary size for a sequence model)."""
    with torch.no_grad():
        out = model.eval()(model_input(batch))
    expected = 3 if "input_ids" in batch else 2
    if out.ndim != expected:
        shape = "[batch, tokens, vocabulary]" if expected == 3 else "[batch, classes]"
        raise ModelError(f"the model returned logits of shape {tuple(out.shape)}; expected {shape}")
    return int(out.shape[-1])


def probe_width(model: nn.Module, batch: dict, flag: str, spec: str) -> int:
    """output_width on a few real rows, token ids zeroed (their range is checked against the vocabulary
    separately); any failure becomes one ModelError naming the model."""
    if "input_ids" in batch:
        batch = {**batch, "input_ids": np.zeros_like(batch["input_ids"])}
    try:
        return output_width(model, batch)
    except ModelError:
        raise
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(f"{flag} {spec} fails on the dataset's inputs ({type(exc).__name__}: {detail})") from None
