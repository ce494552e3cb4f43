"""An hf: teacher scored by vLLM: the same stored arrays as TeacherScorer, from vLLM's hidden states.

vLLM's pooling runner returns the teacher's final (normed) hidden state at every prompt position
(`token_embed`, pooling ALL, no activation): what the output layer reads. This replica applies the
teacher's own output layer (its lm_head, or the input embeddings when they are tied) chunk by chunk
and reduces each chunk with TeacherScorer's own code (`_chunks`, `_reduce`, `_check_finite`), so
every selection (topk, sample, hybrid, adaptive) and every recorded temperature is computed exactly
as the Hugging Face replica computes it. Position p's hidden state predicts token p + 1, as in
Hugging Face: no shift.

One `vllm.LLM` per replica, created once; all rows of a call go to vLLM in one `encode` (it schedules
them itself, without padding). The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING
= 0, set here unless already set), so no `__main__` guard is needed, in a Ray actor or a script.
tensor_parallel_size / pipeline_parallel_size go to vllm.LLM as they are (untested without GPUs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from logitstore import StoreLayout
from trainer.errors import ConfigError, DataError, ModelError
from trainer.inputs.datasets import positions_per_sample
from trainer.inputs.specs import HF_PREFIX
from trainer.teacher.scorer import CHUNK_BYTES, TeacherScorer, precision

# Config fields of architectures whose logits are not output_layer(final hidden state): soft-capping
# (Gemma 2/3), scaling (Cohere, Granite, MiniCPM, Falcon-H1). The HF replica runs their whole
# forward; this one cannot, so it refuses them.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "scale_width", "lm_head_multiplier")
_NEUTRAL = (None, 0, 1, 1.0, 0.0)

# The CPU KV cache (GiB) when neither kv_cache_gib nor VLLM_CPU_KVCACHE_SPACE says: prefill only, so
# it bounds the tokens in flight (about 23k tokens of SmolLM2-135M per GiB in fp32).
CPU_KV_CACHE_GIB = 1.0

_VLLM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class VLLMScorer(TeacherScorer):
    """One hf: teacher replica on vLLM, with TeacherScorer's constructor arguments (state_ref must be
    None: vLLM loads the teacher from its directory) and its output contract: `score(batch)` returns
    what TeacherScorer.score returns for token batches. A construction error is kept in `init_error`
    (the pipeline raises it from __call__), as TeacherScorer does.

    tensor_parallel_size, pipeline_parallel_size: passed to vllm.LLM (untested without GPUs).
    kv_cache_gib: the KV cache (on CPU: default VLLM_CPU_KVCACHE_SPACE, else 1 GiB; on a GPU: vLLM's
    gpu_memory_utilization, 0.8 here, leaves room for the output layer's logits chunks).
    tokenizer: a tokenizer directory for vLLM when the teacher's has none (vLLM's pooling runner
    loads one; token ids are passed as they are). verbose: vLLM's INFO logs and progress bars
    (also VLLM_LOGGING_LEVEL, if set). engine_args: further keyword arguments for vllm.LLM
    (e.g. enforce_eager=True: no torch.compile warm-up at start, slower scoring).
    """

    def __init__(
        self,
        spec: str,
        state_ref: list | None,
        layout: StoreLayout,
        precision: str,
        threads: int,
        chunk_bytes: int = CHUNK_BYTES,
        gpus: int = 1,
        *,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        kv_cache_gib: float | None = None,
        tokenizer: str | None = None,
        verbose: bool = False,
        engine_args: dict | None = None,
    ):
        self.parallel = {"tensor_parallel_size": tensor_parallel_size, "pipeline_parallel_size": pipeline_parallel_size}
        self.kv_cache_gib, self.tokenizer, self.verbose = kv_cache_gib, tokenizer, verbose
        self.engine_args = dict(engine_args or {})
        super().__init__(spec, state_ref, layout, precision, threads, chunk_bytes=chunk_bytes, gpus=gpus)

    def _setup(
        self, spec: str, state_ref: list | None, layout: StoreLayout, requested: str, threads: int, gpus: int
    ) -> None:
        if not spec.startswith(HF_PREFIX):
            raise ConfigError([f"the vllm engine scores hf: teachers only, not {spec!r}"])
        if state_ref is not None:
            raise ConfigError(["the vllm engine loads the teacher from its directory (state_ref must be None)"])
        if layout.views is not None:
            raise ConfigError(["the vllm engine scores token sequences: a store of views is not supported"])
        from trainer.inputs.modeldirs import local_dir

        path = local_dir(spec[len(HF_PREFIX) :])
        self.layout = layout
        self.augment = None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = precision(requested, self.device)
        self.temperatures = torch.tensor(layout.temperatures, dtype=torch.float32, device=self.device)
        # Before vLLM starts: it reduces this process's torch threads to 1 unless OMP_NUM_THREADS is
        # set, and then forbids torch.set_num_threads (the output layer runs on these threads too).
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        weight, bias = output_layer(path, self.dtype)
        if weight.shape[0] != layout.vocab_size:
            raise ModelError(
                f"the teacher's output layer has {weight.shape[0]} rows, the store's vocabulary {layout.vocab_size}"
            )
        self.weight = weight.to(self.device)
        self.bias = bias.to(self.device) if bias is not None else None
        self.llm = self._engine(path)

    def _engine(self, path: str):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
        if not self.verbose:
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # read when vllm is first imported
        import vllm

        args: dict = {
            "runner": "pooling",
            "convert": "embed",
            "pooler_config": {"task": "token_embed", "tok_pooling_type": "ALL", "use_activation": False},
            "dtype": _VLLM_DTYPES[self.dtype],
            "disable_log_stats": True,
            "use_tqdm_on_load": self.verbose,
            "enable_prefix_caching": False,
            **self.parallel,
        }
        if self.tokenizer:
            args["tokenizer"] = self.tokenizer
        if self.kv_cache_gib is not None:
            args["kv_cache_memory_bytes"] = int(self.kv_cache_gib * (1 << 30))
        elif self.device.type == "cpu" and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            args["kv_cache_memory_bytes"] = int(CPU_KV_CACHE_GIB * (1 << 30))
        elif self.device.type == "cuda":
            args["gpu_memory_utilization"] = 0.8
        return vllm.LLM(path, **{**args, **self.engine_args})

    def hidden_states(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> list[torch.Tensor]:
        """The final hidden states [length, H] of the given rows of a token batch, from one encode."""
        from vllm.inputs import TokensPrompt

        ids, lengths = np.asarray(batch["input_ids"]), np.asarray(batch["length"])
        prompts = [TokensPrompt(prompt_token_ids=ids[r, : int(lengths[r])].tolist()) for r in rows]
        outputs = self.llm.encode(prompts, pooling_task="token_embed", use_tqdm=self.verbose)
        return [o.outputs.data for o in outputs]

    def _to_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> logits [N, V] in the teacher's dtype, as the HF replica's output layer."""
        return torch.nn.functional.linear(hidden.to(self.device, self.dtype), self.weight, self.bias)

    def score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One token batch through the teacher -> TeacherScorer.score's arrays: the top-k, log-normalisers
        (and draws, adaptive counts) of the stored positions (p < length, loss_mask 1), flat in sample
        order, with `positions` per sample."""
        if self.init_error is not None:
            raise self.init_error
        if "input_ids" not in batch:
            raise DataError("the vllm engine scores token batches (input_ids), not features")
        lengths = np.asarray(batch["length"], dtype=np.int64)
        seq_len = np.asarray(batch["input_ids"]).shape[1]
        valid = np.arange(seq_len) < lengths[:, None]
        if "loss_mask" in batch:
            valid &= np.asarray(batch["loss_mask"]).astype(bool)
        positions = positions_per_sample(batch)
        rows = np.flatnonzero(valid.any(axis=1))  # a sample with nothing stored is not run at all
        with torch.inference_mode():
            hidden = self.hidden_states(batch, rows) if len(rows) else []
            parts = [h[torch.from_numpy(valid[r, : h.shape[0]]).to(h.device)] for r, h in zip(rows, hidden)]
            width = self.weight.shape[1]
            z = torch.cat(parts) if parts else torch.zeros(0, width)
            out = self._stored(z, self._to_logits, batch, positions, torch.from_numpy(valid).to(self.device))
        return {"id": batch["id"], "shard": batch["shard"], "positions": positions, **out}


def output_layer(path: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's output layer as (weight [V, H], bias [V] or None) in `dtype`: read from its
    safetensors files alone when they name it (lm_head, or the tied input embeddings), else from the
    whole model loaded by transformers. Refuses architectures that transform their logits after it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    for source in (config, getattr(config, "text_config", None)):
        for name in LOGIT_TRANSFORMS:
            if source is not None and getattr(source, name, None) not in _NEUTRAL:
                raise ModelError(
                    f"the teacher's logits are not its output layer's ({name} = {getattr(source, name)}): "
                    "score it with the hf engine"
                )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    head = skeleton.get_output_embeddings()
    aliases = {id(p): [] for p in head.parameters()}
    for name, p in skeleton.named_parameters(remove_duplicate=False):
        if id(p) in aliases:
            aliases[id(p)].append(name)
    weight_names = aliases[id(head.weight)]
    bias_names = aliases[id(head.bias)] if getattr(head, "bias", None) is not None else []
    tensors = _safetensors(Path(path), [*weight_names, *bias_names])
    weight = next((tensors[n] for n in weight_names if n in tensors), None)
    bias = next((tensors[n] for n in bias_names if n in tensors), None)
    if weight is None or (bias_names and bias is None):
        from trainer.inputs.models import HFCausalLM

        layer = HFCausalLM(path, dtype=dtype).model.get_output_embeddings()
        weight, bias = layer.weight.detach(), (layer.bias.detach() if layer.bias is not None else None)
    return weight.to(dtype).contiguous(), (bias.to(dtype) if bias is not None else None)


def _safetensors(directory: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Those of `names` that the directory's safetensors files hold (one file or an index of shards)."""
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {n: directory / weight_map[n] for n in names if n in weight_map}
    elif (directory / "model.safetensors").is_file():
        files = dict.fromkeys(names, directory / "model.safetensors")
    else:
        return {}
    out = {}
    for name, file in files.items():
        with safe_open(str(file), framework="pt") as f:
            if name in f.keys():
                out[name] = f.get_tensor(name)
    return out
