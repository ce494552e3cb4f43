"""Models by spec (trainer.inputs.specs): built-in ones, `hf:<dir>` (a Hugging Face causal LM saved in a
local directory, loaded with `transformers`, which knows every architecture users bring), or
`package.module:function` returning a torch.nn.Module; their weight fingerprint and output width."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from logitstore.storage import open_storage
from trainer.errors import ModelError
from trainer.inputs import registry
from trainer.inputs.modeldirs import HF_WEIGHT_SUFFIXES, local_dir
from trainer.inputs.specs import (
    HF_CONFIG_PREFIX,
    HF_PREFIX,
    check_hf_config,
    check_hf_dir,
    check_model_spec,
    import_callable,
    is_callable_spec,
)


class HFCausalLM(nn.Module):
    """A `transformers` causal LM from a local directory, as input_ids [B, T] -> logits [B, T, V].

    Never touches the hub (local_files_only) and never runs code from the directory. Blocks are
    right-padded, so with causal attention no attention mask is needed for the valid positions.
    """

    def __init__(
        self, path: str, *, pretrained: bool = True, dtype: torch.dtype = torch.float32, device_map: str | None = None
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if pretrained:  # straight from the files in `dtype`: never an fp32 copy of a bf16 checkpoint
            # device_map (accelerate) spreads a teacher larger than one GPU over the visible ones
            extra = {"device_map": device_map} if device_map else {}
            self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype, **extra)
        else:  # the architecture only, from a saved model's directory or a config file
            if Path(path).is_file():
                fields = json.loads(Path(path).read_text())
                config = AutoConfig.for_model(fields.pop("model_type", ""), **fields)
            else:
                config = AutoConfig.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype)

    def forward(self, input_ids: torch.Tensor, hidden: bool = False, layers: tuple[int, ...] | None = None):
        """-> logits [B, T, V], or with hidden=True what the output layer reads [B, T, H]; with
        `layers` (numbered as transformers' hidden_states), also those layers' states:
        (out, [[B, T, H] per layer])."""
        if layers is None:
            return self.hidden_states(input_ids) if hidden else self.model(input_ids=input_ids, use_cache=False).logits
        if hidden:
            out = self.transformer.base_model(input_ids=input_ids, use_cache=False, output_hidden_states=True)
            return out.last_hidden_state, [out.hidden_states[layer] for layer in layers]
        out = self.model(input_ids=input_ids, use_cache=False, output_hidden_states=True)
        return out.logits, [out.hidden_states[layer] for layer in layers]

    @property
    def transformer(self) -> nn.Module:
        """The transformers model itself: `model`, or what a peft wrapper (LoRA adapters,
        trainer/student/lora.py) wraps; its base model's forward gives the hidden states."""
        unwrap = getattr(self.model, "get_base_model", None)
        return unwrap() if callable(unwrap) else self.model

    def feature_width(self, layer: int) -> int:
        """The width of hidden_states[layer] (0..num_hidden_layers)."""
        config = self.model.config
        if not 0 <= layer <= config.num_hidden_layers:
            raise ValueError(f"its layers are 0..{config.num_hidden_layers}")
        return int(config.hidden_size)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> [B, T, H]: what the output layer reads (the base model's last hidden state)."""
        return self.transformer.base_model(input_ids=input_ids, use_cache=False).last_hidden_state

    def output_layer(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> logits [N, V]."""
        return self.model.get_output_embeddings()(hidden)

    def splits_at_the_output_layer(self) -> bool:
        """Whether output_layer(hidden_states(x)) is this model's forward: true of most causal LMs
        (Llama, Qwen, Mistral, GPT-2); not of those that scale or cap their logits after the head
        (Gemma 2's soft-capping, Cohere's logit_scale, Granite's scaling), which this probe finds."""
        device = self.model.get_input_embeddings().weight.device
        probe = torch.arange(2, device=device).unsqueeze(0) % self.model.config.vocab_size
        training = self.training  # from_config leaves a model in train mode: dropout would differ between passes
        self.eval()
        try:
            with torch.inference_mode():
                split = self.output_layer(self.hidden_states(probe))
                whole = self(probe)
        except (AttributeError, TypeError, ValueError):
            return False
        finally:
            self.train(training)
        return split.shape == whole.shape and torch.allclose(split.float(), whole.float(), rtol=1e-4, atol=1e-5)


def feature_widths(model: nn.Module, layers: tuple[int, ...], flag: str, spec: str) -> tuple[int, ...]:
    """The width of each layer's hidden state per position, as the model says (`feature_width`); a
    model that cannot return its hidden states (forward without `layers`) is refused."""
    width = getattr(model, "feature_width", None)
    if not callable(width) or "layers" not in inspect.signature(model.forward).parameters:
        raise ModelError(
            f"{flag} {spec} does not return hidden features: its forward needs a `layers` argument and the "
            "model a feature_width(layer) method (README, Teacher features); or drop the feature flags"
        )
    widths = []
    for layer in layers:
        try:
            widths.append(int(width(layer)))
        except (ValueError, IndexError) as exc:
            raise ModelError(f"{flag} {spec} has no layer {layer}: {exc}") from None
    return tuple(widths)


def splits_at_the_output_layer(model: nn.Module) -> bool:
    """Whether `model(x, hidden=True)` and `model.output_layer(h)` compose to its forward, so a loss
    can compute the logits chunk by chunk (the built-in GPT, most hf: causal LMs)."""
    if isinstance(model, HFCausalLM):
        return model.splits_at_the_output_layer()
    forward = inspect.signature(model.forward).parameters
    return callable(getattr(model, "output_layer", None)) and "hidden" in forward


@contextlib.contextmanager
def _hf_load_errors(spec: str, what: str):
    """transformers' failures to read a directory, as one ModelError naming the spec."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{what} {spec!r} cannot be loaded ({str(exc).splitlines()[0]}): check the directory's files"
        ) from None


def build_model(
    spec: str,
    what: str = "--model",
    *,
    pretrained: bool = True,
    dtype: torch.dtype = torch.float32,
    device_map: str | None = None,
) -> nn.Module:
    """Build the model a spec names. pretrained=False skips loading a built-in's trained weights;
    `dtype` is what an hf: model is loaded in (the others are built in fp32); `device_map` places an
    hf: model's layers over several devices (transformers/accelerate)."""
    if spec.startswith(HF_PREFIX):
        problems = check_hf_dir(spec, what)
        if problems:
            raise ModelError(problems[0])
        with _hf_load_errors(spec, what):
            path = local_dir(spec[len(HF_PREFIX) :], weights=pretrained)  # this machine's copy of a URI
            model = HFCausalLM(path, pretrained=pretrained, dtype=dtype, device_map=device_map)
    elif spec.startswith(HF_CONFIG_PREFIX):  # fresh weights whatever `pretrained` says
        problems = check_hf_config(spec, what)
        if problems:
            raise ModelError(problems[0])
        with _hf_load_errors(spec, what):
            model = HFCausalLM(spec[len(HF_CONFIG_PREFIX) :], pretrained=False, dtype=dtype)
    elif spec in registry.MODELS:
        entry = registry.MODELS[spec]
        model = entry.make() if pretrained else entry.make_untrained()
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


def hf_files_sha256(path: str | Path) -> str:
    """Fingerprint of a Hugging Face model directory's config and weight files, as FORMAT.md defines
    it: read once, in pieces (a 7B checkpoint is never held in memory, nor built to be hashed); a
    prefix on object storage is read the same way, straight from the objects."""
    storage = open_storage(str(path), follow_links=True)
    sizes = {
        name: size
        for name, size in storage.list().items()
        if "/" not in name and (name == "config.json" or name.endswith(HF_WEIGHT_SUFFIXES))
    }
    digest = hashlib.sha256()
    for name in sorted(sizes):
        file_digest = hashlib.sha256()
        storage.read_into(name, file_digest.update)
        digest.update(name.encode() + b"\0" + struct.pack("<Q", sizes[name]) + file_digest.digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class HFModelFacts:
    """What the driver needs of an hf: model, read from its config without loading a weight."""

    vocab_size: int  # rows of the output embedding (the logits' width; may exceed the tokenizer's)
    num_parameters: int
    max_positions: int | None  # the longest input it embeds (None: the config does not say)
    hidden_size: int = 0  # the width of its hidden states
    num_layers: int = 0  # hidden_states has num_layers + 1 entries


def hf_model_facts(spec: str, what: str) -> HFModelFacts:
    """The architecture built on torch's meta device: shapes without memory, whatever the model's size."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with _hf_load_errors(spec, what):
        config = AutoConfig.from_pretrained(local_dir(spec[len(HF_PREFIX) :], weights=False), local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    width = int(head.weight.shape[0]) if head is not None else int(config.vocab_size)
    max_positions = getattr(config, "max_position_embeddings", None)
    return HFModelFacts(
        width,
        sum(p.numel() for p in model.parameters()),
        max_positions,
        int(getattr(config, "hidden_size", 0) or 0),
        int(getattr(config, "num_hidden_layers", 0) or 0),
    )


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
