"""The training run's configuration (jobs.train_student; a sweep's holds one): a dataclass in
sections, whose flags jobs/cli.py builds the CLI from (flat: --lr, not --distill-lr), each section
with its own checks; and the settings each student of a run has for itself.

Light on purpose (no torch, no Ray), so `python -m jobs.train_student --help` loads neither.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from logitstore.errors import StoreError
from logitstore.manifest import Manifest, read_manifest
from logitstore.storage import is_object_uri
from trainer import settings
from trainer.errors import ConfigError
from trainer.inputs import registry, specs
from trainer.options import (
    RESOURCES_HELP,
    SectionedConfig,
    check_out_dir,
    choice_problem,
    choice_problems,
    flags,
    option,
    parse_resources,
    required_problems,
    section,
)

LOSS_KINDS = ("kl", "reverse-kl", "jsd")
CROSS_TOKENIZER_LOSSES = ("uld", "gold")
FEATURE_LOSSES = ("mse", "cosine")


def parse_feature_map(text: str) -> tuple[list[tuple[int, int]], list[str]]:
    """`S:T,S:T,...` -> ([(student layer, teacher layer)], problems)."""
    pairs, problems = [], []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        student, _, teacher = item.partition(":")
        try:
            pair = (int(student), int(teacher))
        except ValueError:
            problems.append(f"--feature-map entry {item!r} is not S:T (a student layer and a stored teacher layer)")
            continue
        if min(pair) < 0:
            problems.append(f"--feature-map entry {item!r} names a negative layer")
        pairs.append(pair)
    if text.strip() and not pairs and not problems:
        problems.append("--feature-map names no layers: pass S:T,... or leave it out")
    return pairs, problems


LR_SCHEDULES = ("epoch-cosine", "cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16")
STRATEGIES = ("ddp", "fsdp")
SHUFFLE_WINDOW = 8192

# What one student of a multi-student run (--variants) may set for itself; the rest is shared.
VARIANT_FIELDS = (
    "student",
    "lr",
    "weight_decay",
    "temperature",
    "alpha",
    "loss",
    "jsd_beta",
    "feature_map",
    "feature_loss",
    "feature_weight",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
)


@dataclass(frozen=True)
class StudentSettings:
    """What one student of a run sets for itself (VARIANT_FIELDS)."""

    student: str
    lr: float
    weight_decay: float
    temperature: float
    alpha: float
    loss: str
    jsd_beta: float
    feature_map: str = ""
    feature_loss: str = "mse"
    feature_weight: float = 1.0
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = ""

    @property
    def feature_pairs(self) -> list[tuple[int, int]]:
        """(student layer, teacher layer) pairs of the feature loss ([] when it is off)."""
        return parse_feature_map(self.feature_map)[0] if self.feature_weight > 0 else []

    def to_dict(self) -> dict:
        return asdict(self)


LOG_SINKS = ("csv", "tensorboard", "mlflow", "wandb")
SINK_PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}


def _shown(spec: str) -> str:
    """A spec a store names, as a message shows it: plain when it is one, else a short repr."""
    plain = spec.isprintable() and len(spec) <= 100 and " " not in spec
    return spec if plain else repr(spec[:60])


def _stored_code_problems(augment: str, store: str) -> list[str]:
    """A store of views whose augmentation is not built in names code: it is never imported from
    the store alone (only a `--augment` the user passes runs code)."""
    if augment in registry.AUGMENTS:
        return []
    if specs.is_callable_spec(augment) and augment.isprintable() and len(augment) <= 100:
        return [
            f"store {store} names code {augment} as the augmentation of its views; it is run only when "
            f"--augment {augment} is passed: pass that if you trust the code"
        ]
    return [
        f"store {store} names augmentation {_shown(augment)}, neither built in "
        f"({registry.names(registry.AUGMENTS)}) nor module:function: the store is damaged; dump it again"
    ]


def log_sinks(log_to: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.strip() for s in log_to.split(",") if s.strip()))


def _log_sink_problems(log_to: str) -> list[str]:
    import importlib.util

    problems = []
    for sink in log_sinks(log_to):
        if sink not in LOG_SINKS:
            problems.append(f"--log-to {sink!r} is not one of {', '.join(LOG_SINKS)}")
        elif sink in SINK_PACKAGES and importlib.util.find_spec(SINK_PACKAGES[sink]) is None:
            problems.append(
                f"--log-to {sink} needs the {SINK_PACKAGES[sink]} package: pip install {SINK_PACKAGES[sink]}"
            )
    return problems


@dataclass(frozen=True)
class Optimisation:
    """How every student of a run takes its optimiser steps (shared by --variants)."""

    precision: str = "fp32"  # bf16: autocast for the student's forward and loss; fp32 master weights
    grad_accum: int = 1  # batches per optimiser step
    clip_grad_norm: float = 0.0  # 0: off
    warmup_steps: int = 0
    lr_schedule: str = "epoch-cosine"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    total_steps: int = 1  # the run's optimiser steps on each worker (estimated), for per-step schedules
    strategy: str = "ddp"  # fsdp: parameters, gradients and optimiser state sharded over the workers
    gradient_checkpointing: bool = False  # HF students: layers' activations recomputed in the backward


@dataclass
class Data:
    """What the students learn from: the store, the data it was dumped from, and the held-out data."""

    store: str = option("store written by jobs.dump_logits over --dataset", "", required=True)
    dataset: str = option(
        "the training data, which must be the data the store was dumped from; optional for a store that "
        f"carries its inputs (token data dumped by this version: the store alone is the data): {specs.DATASET_FORMS}",
        "",
    )
    eval_dataset: str = option(
        "held-out data for eval_accuracy / eval_perplexity (optional; same forms as --dataset)", ""
    )
    eval_store: str = option(
        "store dumped over --eval-dataset, for teacher_agreement and eval_kl_to_teacher (optional; without "
        "--eval-dataset when it carries its inputs)",
        "",
    )
    augment: str = option(
        "augment the student's training inputs: with a store of views (dump_logits --views) its own "
        "augmentation is replayed from the stored seeds (a different view each epoch; leave this empty or "
        "name the same one); with a plain store, a fresh augmentation each epoch against the un-augmented "
        "teacher's targets (inconsistent)",
        "",
    )
    shuffle_window: int = option(
        "samples whose order is shuffled together each epoch: an epoch takes the store's shards in a fresh "
        "random order, groups them into windows of at least this many samples and shuffles each window, so a "
        "batch mixes samples of many shards; memory of a join task is about one window's targets",
        SHUFFLE_WINDOW,
    )
    eval_batch_size: int = option("samples per eval batch", 256, resume_free=True)
    student_tokenizer: str = option(
        "a student with another tokenizer than the store's: bytes, bpe:N, a tokenizer.json or a Hugging Face "
        "tokenizer directory (default: an hf: student's own, when it differs from the store's). The store's text "
        "is tokenised again with it and positions aligned on the text's bytes (see --cross-tokenizer); needs a "
        "store that carries its inputs",
        "",
    )

    def read_store(self) -> tuple[Manifest | None, list[str]]:
        """The store's manifest, or None (no --store, or the problem of reading it)."""
        if not self.store:
            return None, []
        try:
            return read_manifest(self.store), []
        except StoreError as exc:
            return None, [f"--store: {exc}"]

    def problems(self, manifest: Manifest | None) -> list[str]:
        problems = required_problems(self)
        if manifest is not None and not self.dataset and manifest.layout.inputs is None:
            problems.append(
                f"--dataset is required: store {self.store} does not carry its inputs (format version "
                f"{manifest.format_version}); pass the dataset it was dumped from"
            )
        problems += self._augment_problems(manifest) + self._eval_store_problems()
        if self.dataset:
            problems += specs.check_dataset_spec(self.dataset, "--dataset")
        if self.eval_dataset:
            problems += specs.check_dataset_spec(self.eval_dataset, "--eval-dataset")
        for flag, value in (("--shuffle-window", self.shuffle_window), ("--eval-batch-size", self.eval_batch_size)):
            if value < 1:
                problems.append(f"{flag} must be >= 1, got {value}")
        return problems

    def cross_tokenizer_problems(self, manifest: Manifest | None) -> list[str]:
        """--student-tokenizer: the store must be its own data, and carry the tokenizer it was made with."""
        if not self.student_tokenizer or manifest is None:
            return []
        problems = []
        if manifest.layout.inputs is None or manifest.tokenizer is None:
            problems.append(
                f"--student-tokenizer needs a store that carries its inputs and its tokenizer (text dumped from "
                f"files or built-in text); {self.store} does not: dump the text again"
            )
        if self.dataset:
            problems.append("--student-tokenizer trains from the store's own text: drop --dataset")
        if self.eval_store:
            problems.append("--student-tokenizer evaluates on labels (--eval-dataset): drop --eval-store")
        spec = self.student_tokenizer
        if spec != "bytes" and not registry.BPE_SPEC.match(spec) and not Path(spec).exists():
            problems.append(
                f"--student-tokenizer {spec!r} is neither bytes, bpe:N, nor an existing tokenizer.json or directory"
            )
        return problems

    def _augment_problems(self, manifest: Manifest | None) -> list[str]:
        problems = []
        if self.augment:
            problems += specs.check_augment_spec(self.augment, "--augment")
            if registry.is_text(self.dataset):
                problems.append(f"--augment applies to inputs of features; {self.dataset} is text: leave --augment out")
        if manifest is not None and manifest.views and self.augment and self.augment != manifest.views.augment:
            problems.append(
                f"--augment {self.augment} differs from the augmentation of the store's views "
                f"({_shown(manifest.views.augment)}): leave --augment out to replay the store's"
            )
        elif manifest is not None and manifest.views and not self.augment:
            problems += _stored_code_problems(manifest.views.augment, self.store)
        return problems

    def _eval_store_problems(self) -> list[str]:
        if not self.eval_store:
            return []
        try:
            eval_manifest = read_manifest(self.eval_store)
        except StoreError as exc:
            return [f"--eval-store: {exc}"]
        problems = []
        if not self.eval_dataset and eval_manifest.layout.inputs is None:
            problems.append(
                "--eval-store needs --eval-dataset (the data it was dumped from): it does not carry its inputs"
            )
        if eval_manifest.views:
            problems.append(
                f"--eval-store {self.eval_store} holds augmented views; evaluation is on the inputs "
                "as they are: dump the eval data without --views"
            )
        return problems

    def views_augment(self, manifest: Manifest) -> str:
        """The augmentation the run applies: --augment, else the one a store of views records when it
        is built in. A store is data: code it names (`module:function`) is run only when --augment
        names the same (ConfigError otherwise, as validate() reports)."""
        if self.augment or not manifest.views:
            return self.augment
        problems = _stored_code_problems(manifest.views.augment, self.store)
        if problems:
            raise ConfigError(problems)
        return manifest.views.augment


@dataclass
class Distillation:
    """What each student of a run is and learns with (VARIANT_FIELDS), and --variants, which makes
    it several students."""

    student: str = option(f"the student: {specs.model_forms('student')}", "", required=True)
    lr: float = option("peak learning rate (see --lr-schedule, --warmup-steps)", 0.01)
    weight_decay: float = option("AdamW weight decay", 1e-4)
    temperature: float = option(
        "KD temperature, one the store recorded; 0 = by the store: 1 for a store of token positions (a language "
        "model's tail beyond the stored k holds most of the mass at T > 1: jobs.inspect_store recommends a T), "
        "4 for a classification store",
        0.0,
    )
    alpha: float = option("loss = alpha * KD + (1 - alpha) * CE; 0 = labels only, 1 = KD only", 0.9)
    loss: str = option(
        "KD divergence over the stored top-k + rest bucket: kl (forward, Hinton), reverse-kl, or jsd "
        "(generalised Jensen-Shannon, see --jsd-beta); sample/hybrid stores support kl only",
        "kl",
        choices=LOSS_KINDS,
    )
    jsd_beta: float = option(
        "beta of --loss jsd: beta * KL(p||m) + (1 - beta) * KL(q||m), m = beta * p + (1 - beta) * q; in (0, 1)", 0.5
    )
    feature_map: str = option(
        "feature distillation: pairs S:T,... of a student layer S and a teacher layer T the store holds (dump_logits "
        "--hidden-layers; numbered as Hugging Face's hidden_states): the student's state after S, through a learned "
        "linear map and the store's projection, is pulled towards the teacher's stored one",
        "",
    )
    feature_loss: str = option(
        "with --feature-map: mse (mean squared error over the projected dimensions) or cosine (1 - cosine similarity)",
        "mse",
        choices=FEATURE_LOSSES,
    )
    feature_weight: float = option(
        "with --feature-map: loss = alpha * KD + (1 - alpha) * CE + feature-weight * feature loss (0 = off)", 1.0
    )
    lora_r: int = option(
        "LoRA: train rank-r adapters (peft) on an hf: student's linear layers, its weights frozen (0 = train every "
        "weight)",
        0,
    )
    lora_alpha: float = option("with --lora-r: the adapters' scale is lora-alpha / lora-r", 16.0)
    lora_dropout: float = option("with --lora-r: dropout on the adapters' input", 0.0)
    lora_targets: str = option(
        "with --lora-r: the modules to adapt, comma-separated names (e.g. q_proj,v_proj); default: every linear layer "
        "but the output layer",
        "",
    )
    merge_lora: bool = option(
        "with --lora-r: export the merged model (plain transformers loads it, no peft) with the adapter in "
        "student/adapter/; without: student/ is the adapter",
        False,
    )
    cross_tokenizer: str = option(
        "KD across tokenizers (--student-tokenizer): uld (sorted-probability L1 over the stored head and the tail, "
        "Boizard et al.) or gold (exact KL on the tokens both vocabularies share by text, ULD on the rest)",
        "uld",
        choices=CROSS_TOKENIZER_LOSSES,
    )
    variants: str = option(
        "train several students in this one run from one read of the store (each batch feeds all): a JSON "
        "list of objects, each overriding some of "
        + ", ".join(VARIANT_FIELDS)
        + "; the students share the data, epochs, batch size and --seed (the same init and data order as a run "
        "of each alone)",
        "",
    )

    def problems(
        self, manifest: Manifest | None, students: list[dict] | None = None, each: str = "--variants"
    ) -> list[str]:
        """This student's problems, then each other's: those of --variants, or `students` (a sweep's
        trials, as parsed variants) named `each` in the messages."""
        problems = required_problems(self) + choice_problems(self) + self._student_problems(manifest)
        entries, found = self._decoded_variants() if students is None else (students, [])
        variants = []
        for i, entry in enumerate(entries):
            variant, wrong = _variant(entry, f"{each}[{i}]")
            variants.append(variant)
            found += wrong
        problems += found
        for i, variant in enumerate(variants):
            problems += [
                f"{each}[{i}]: {p}"
                for p in replace(self, variants="", **variant)._student_problems(manifest)
                if p not in problems and not p.endswith(" is required")
            ]
        if self.merge_lora and not any(v.get("lora_r", self.lora_r) for v in variants or [{}]):
            problems.append("--merge-lora merges LoRA adapters: add --lora-r R, or drop --merge-lora")
        return problems

    def students(self) -> list[StudentSettings]:
        """The settings of each student of this run: this one's, or one per --variants entry (validated first)."""
        entries, _ = self._decoded_variants()
        configs = [replace(self, variants="", **_variant(entry, "")[0]) for entry in entries] or [self]
        return [StudentSettings(**{k: getattr(c, k) for k in VARIANT_FIELDS}) for c in configs]

    def _decoded_variants(self) -> tuple[list[dict], list[str]]:
        """--variants as a list of objects, or the problem of its text."""
        if not self.variants:
            return [], []
        try:
            variants = json.loads(self.variants)
        except json.JSONDecodeError as exc:
            return [], [
                f"--variants is not valid JSON ({exc.msg} at character {exc.pos}): pass a list of objects "
                'such as \'[{"lr": 0.01}, {"lr": 0.003}]\''
            ]
        if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
            return [], ["--variants must be a non-empty JSON list of objects, one per student"]
        return variants, []

    def _student_problems(self, manifest: Manifest | None) -> list[str]:
        """The checks of what each student of a run may set for itself (VARIANT_FIELDS)."""
        problems = self._temperature_problems(manifest)
        if self.student:
            problems += specs.check_model_spec(self.student, "--student")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"--alpha must be in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.loss not in LOSS_KINDS:
            problems += choice_problem("--loss", self.loss, LOSS_KINDS)
        elif self.loss != "kl" and manifest is not None and manifest.draws and self.alpha > 0:
            problems.append(
                f"--loss {self.loss} needs the teacher's exact top-k, but this store holds "
                f"{manifest.selection.kind} draws (an estimate of forward KL): use --loss kl"
            )
        if self.loss == "jsd" and not 0.0 < self.jsd_beta < 1.0:
            problems.append(f"--jsd-beta must be in (0, 1), got {self.jsd_beta}")
        return problems + self._feature_problems(manifest) + self._lora_problems()

    def _lora_problems(self) -> list[str]:
        if self.lora_r < 0:
            return [f"--lora-r must be >= 0, got {self.lora_r}"]
        if self.lora_r == 0:
            return []
        problems = []
        if self.student and not self.student.startswith(specs.HF_PREFIX):
            problems.append(
                f"--lora-r trains adapters on a pretrained Hugging Face student (hf:<dir>); --student {self.student} "
                "is not one: drop --lora-r"
            )
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            problems.append(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if importlib.util.find_spec("peft") is None:
            problems.append('--lora-r needs peft: pip install -e ".[lora]"')
        return problems

    def _feature_problems(self, manifest: Manifest | None) -> list[str]:
        """--feature-map against the layers the store holds."""
        if not (math.isfinite(self.feature_weight) and self.feature_weight >= 0):
            return [f"--feature-weight must be >= 0, got {self.feature_weight}"]
        pairs, problems = parse_feature_map(self.feature_map)
        if problems or not pairs or self.feature_weight == 0 or manifest is None:
            return problems
        stored = manifest.layout.features
        if stored is None:
            return [
                f"--feature-map needs a store with teacher features; {self.feature_map!r} names teacher layers but "
                f"the store has none: dump it with --hidden-layers {','.join(str(t) for _, t in pairs)}"
            ]
        missing = sorted({t for _, t in pairs} - set(stored.layers))
        if missing:
            return [
                f"--feature-map names teacher layer {missing[0]}, which the store does not hold (it holds "
                f"{','.join(map(str, stored.layers))}): map to those, or dump with --hidden-layers {missing[0]}"
            ]
        return []

    def _temperature_problems(self, manifest: Manifest | None) -> list[str]:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            return [f"--temperature must be positive (or 0: the store's default), got {self.temperature}"]
        if manifest is None:
            return []
        t = self.temperature or store_temperature(manifest)
        named = f"--temperature {t:g}" if self.temperature else f"the default temperature of this store ({t:g})"
        try:
            manifest.temperature_index(t)
        except ValueError:
            recorded = ", ".join(f"{r:g}" for r in manifest.temperatures)
            return [
                f"{named} was not recorded in the store (recorded: {recorded}): pass --temperature with one of "
                "those, or dump again with it in --temperatures"
            ]
        drawn_at = manifest.selection.temperature
        if manifest.draws and drawn_at != t:
            return [
                f"{named} differs from the temperature the store's {manifest.selection.kind} draws were made at "
                f"({drawn_at:g}): train at --temperature {drawn_at:g}"
            ]
        return []

    def with_store_temperature(self, manifest: Manifest) -> Distillation:
        """These settings with --temperature 0 (here and in --variants) made the store's default."""
        t = store_temperature(manifest)
        entries, _ = self._decoded_variants()
        variants = [{**e, "temperature": t} if e.get("temperature") == 0 else e for e in entries]
        return replace(
            self, temperature=self.temperature or t, variants=json.dumps(variants) if variants else self.variants
        )


def store_temperature(manifest: Manifest) -> float:
    """What a run trains at without --temperature: 1 for a store of token positions (an LM's tail
    beyond the stored k holds most of the mass at T > 1: a median 0.67 at T = 2 and 0.97 at T = 4 on
    SmolLM2's chat store with k = 64), 4 for a classification store (Hinton's soft targets)."""
    per_sample = max(1, manifest.layout.num_views)  # a classification store holds one position per view
    tokens = manifest.layout.inputs is not None or manifest.num_positions != manifest.num_samples * per_sample
    return 1.0 if tokens else 4.0


def _variant(entry: dict, name: str) -> tuple[dict, list[str]]:
    """One student's entry of --variants (or a sweep's trial, `name` in the messages) by field name,
    its values as their fields' types; what it cannot set or gives the wrong type of is left out."""
    hints = {f.name: f.type for f in fields(Distillation)}
    variant, problems = {}, []
    for key, value in entry.items():
        field = key.replace("-", "_")
        if field not in VARIANT_FIELDS:
            problems.append(
                f"{name}: {key!r} cannot differ between the students of one run: use one of {', '.join(VARIANT_FIELDS)}"
            )
            continue
        if hints[field] == "float" and isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = (
            isinstance(value, str)
            if hints[field] == "str"
            else isinstance(value, (int, float)) and not isinstance(value, bool)
        )
        if not ok:
            kind = "a string" if hints[field] == "str" else "a number"
            problems.append(f"{name}: {key} must be {kind}, got {value!r}")
            continue
        variant[field] = float(value) if hints[field] == "float" else value
    return variant, problems


@dataclass
class Training:
    """How the students are trained: epochs, batches and seed, the optimiser and its schedule, the
    precision and the memory it takes."""

    epochs: int = option("passes over the training data", 30)
    batch_size: int = option("samples per optimiser step on each worker", 64)
    seed: int = option("seed for the student's initialisation and the data order", 0)
    precision: str = option(
        "the student's compute precision: fp32, or bf16 (autocast for its forward and loss; weights, "
        "gradients and optimiser state stay fp32)",
        "fp32",
        choices=PRECISIONS,
    )
    grad_accum: int = option(
        "batches per optimiser step (gradient accumulation): the step is that of one batch of "
        "--batch-size x N samples, each position weighted as in it",
        1,
    )
    clip_grad_norm: float = option("clip the gradients' global norm to this before each step (0 = off)", 0.0)
    gradient_checkpointing: bool = option(
        "recompute each transformer layer's activations in the backward instead of keeping them "
        "(Hugging Face students: transformers' gradient_checkpointing_enable): less memory for about a "
        "third more compute",
        False,
    )
    warmup_steps: int = option("optimiser steps of linear learning-rate warmup from 0", 0)
    lr_schedule: str = option(
        "learning-rate schedule after warmup: epoch-cosine (cosine over the epochs, stepped once per "
        "epoch), or per optimiser step over the run: cosine, linear (to 0) or constant",
        "epoch-cosine",
        choices=LR_SCHEDULES,
    )
    optimizer: str = option("the optimiser", "adamw", choices=("adamw",))
    adam_beta1: float = option("AdamW beta1", 0.9)
    adam_beta2: float = option("AdamW beta2", 0.999)
    adam_eps: float = option("AdamW epsilon", 1e-8)
    loss_chunk: int = option(
        "positions per chunk of the loss and of eval: each chunk's logits (from the student's output layer "
        "where the student exposes it) and log-softmax exist only while it is computed, so peak memory is "
        "chunk x vocabulary, with the same values and gradients; 0 = auto (a float32 chunk x vocabulary of "
        "at most 256 MiB)",
        0,
        resume_free=True,
    )

    def problems(self) -> list[str]:
        problems = choice_problems(self)
        if self.seed < 0:
            problems.append(f"--seed must be >= 0, got {self.seed}")
        for flag, value in (
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
        ):
            if value < 1:
                problems.append(f"{flag} must be >= 1, got {value}")
        if self.clip_grad_norm < 0:
            problems.append(f"--clip-grad-norm must be >= 0 (0 = off), got {self.clip_grad_norm}")
        if self.warmup_steps < 0:
            problems.append(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        for flag, beta in (("--adam-beta1", self.adam_beta1), ("--adam-beta2", self.adam_beta2)):
            if not 0.0 <= beta < 1.0:
                problems.append(f"{flag} must be in [0, 1), got {beta:g}")
        if not self.adam_eps > 0:
            problems.append(f"--adam-eps must be > 0, got {self.adam_eps:g}")
        if self.loss_chunk < 0:
            problems.append(f"--loss-chunk must be >= 0 (0 = auto), got {self.loss_chunk}")
        return problems


@dataclass
class Scale:
    """The workers a run trains on, how they hold the student, and how often one may die."""

    workers: int = option("Ray Train workers", 1)
    worker_resources: str = option(RESOURCES_HELP.format(what="training worker"), "", resume_free=True)
    strategy: str = option(
        "how the workers hold the student: ddp (a whole replica on each, gradients averaged) or fsdp "
        "(torch FSDP2: each transformer block's parameters, gradients and optimiser state sharded over the "
        "workers, for students that do not fit one device; checkpoints sharded, the export whole)",
        "ddp",
        choices=STRATEGIES,
    )
    cpus_per_worker: float = option("CPUs per training worker; 0 = auto (leave room for the data pipeline)", 0.0)
    threads_per_worker: int = option(
        "torch threads of each training worker on the CPU; 0 = its --cpus-per-worker (at least 1). More threads "
        "than reserved CPUs share them with the data pipeline: on 2 cores, --threads-per-worker 2 trains an LM "
        "student about 1.5 times as fast once a small store is read",
        0,
    )
    max_failures: int = option(
        "restarts from the latest checkpoint after a worker dies (Ray Train FailureConfig; -1 = unlimited)",
        3,
        resume_free=True,
    )

    def problems(self) -> list[str]:
        problems = choice_problems(self)
        if self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        problems += parse_resources(self.worker_resources, "--worker-resources")[1]
        if self.cpus_per_worker < 0:
            problems.append(f"--cpus-per-worker must be >= 0 (0 = auto), got {self.cpus_per_worker}")
        if self.threads_per_worker < 0:
            problems.append(f"--threads-per-worker must be >= 0 (0 = --cpus-per-worker), got {self.threads_per_worker}")
        if self.max_failures < -1:
            problems.append(f"--max-failures must be >= -1 (-1 = unlimited), got {self.max_failures}")
        return problems


@dataclass
class Progress:
    """When a run evaluates, checkpoints and logs."""

    eval_every: int = option("evaluate every N epochs (0 = after the last epoch only)", 0)
    checkpoint_every: int = option("checkpoint every N epochs (the last epoch is always checkpointed)", 1)
    checkpoint_every_steps: int = option("also checkpoint every N optimiser steps within an epoch (0 = off)", 0)
    log_every: int = option(
        "every N optimiser steps: a progress line with loss, positions/s and ETA, "
        "and a row of step metrics in the --log-to sinks (0 = off)",
        10,
        resume_free=True,
    )
    log_to: str = option(
        "where step and epoch metrics go, comma-separated, under <output>/logs/: csv (steps.csv), "
        "tensorboard (event files), mlflow (a local file store; needs mlflow installed), wandb (a W&B run, "
        "offline under logs/wandb/ unless WANDB_MODE is set; needs wandb installed); empty = none",
        "csv,tensorboard",
        resume_free=True,
    )
    verbose: bool = option(
        "also show Ray's own output (its workers' lines, Ray Train's reports, Ray Data's INFO lines) and "
        "a progress line every --log-every steps; without it the run prints a progress line at each quarter",
        False,
        resume_free=True,
    )

    def problems(self) -> list[str]:
        problems = []
        if self.eval_every < 0:
            problems.append(f"--eval-every must be >= 0, got {self.eval_every}")
        if self.checkpoint_every < 1:
            problems.append(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if self.checkpoint_every_steps < 0:
            problems.append(f"--checkpoint-every-steps must be >= 0 (0 = off), got {self.checkpoint_every_steps}")
        if self.log_every < 0:
            problems.append(f"--log-every must be >= 0 (0 = off), got {self.log_every}")
        return problems + _log_sink_problems(self.log_to)


@dataclass
class TrainConfig(SectionedConfig):
    """Distil a student from a logit store (Ray Train), never running the teacher."""

    data: Data = section(Data)
    distill: Distillation = section(Distillation)
    training: Training = section(Training)
    scale: Scale = section(Scale)
    progress: Progress = section(Progress)
    output: str = option(
        "directory (or s3://, gs://, az:// prefix) for metrics.json, config.json, logs, the checkpoints and the "
        "exported student",
        "",
        required=True,
    )
    overwrite: bool = option("replace a finished run already in --output", False, resume_free=True)

    def identity(self) -> dict:
        """The flags that decide a run's results (by name): a rerun with the same ones resumes it.
        The others (resume_free) may change on a resume, e.g. a smaller --loss-chunk after running
        out of memory."""
        free = {name for name, flag in flags(TrainConfig).items() if flag.field.metadata["resume_free"]}
        return {name: value for name, value in self.to_dict().items() if name not in free}

    def validate(self) -> list[str]:
        problems = self.run_problems() + required_problems(self)
        if self.output:
            problems += self._output_problems()
        return list(dict.fromkeys(problems))  # a student's problem and a flag's can be the same

    def run_problems(self, students: list[dict] | None = None, each: str = "--variants") -> list[str]:
        """Every problem but those of --output (a sweep's is its own), each section's; `students`:
        a sweep's trials, checked as the students of one run instead of --variants."""
        manifest, problems = self.data.read_store()
        return [
            *settings.problems(),
            *problems,
            *self.data.problems(manifest),
            *self.distill.problems(manifest, students, each),
            *self.training.problems(),
            *self.scale.problems(),
            *self.progress.problems(),
            *self._feature_strategy_problems(students),
            *self.data.cross_tokenizer_problems(manifest),
            *(
                ["--feature-map compares the teacher's positions: it cannot train a student of another tokenizer"]
                if self.data.student_tokenizer and self.distill.feature_map
                else []
            ),
        ]

    def _feature_strategy_problems(self, students: list[dict] | None) -> list[str]:
        featured = self.distill.feature_map or any((s or {}).get("feature_map") for s in students or [])
        if featured and self.scale.strategy == "fsdp":
            return ["--feature-map is not built for --strategy fsdp yet: use --strategy ddp (the default)"]
        return []

    def _output_problems(self) -> list[str]:
        from trainer.student.outputs import RunOutput

        problems = [] if is_object_uri(self.output) else check_out_dir(self.output, "--output")
        try:
            finished = not problems and RunOutput(self.output).exists("metrics.json")
        except StoreError as exc:
            return [f"--output {self.output}: {exc}"]
        if finished and not self.overwrite:
            problems.append(
                f"{self.output} already holds a finished run (metrics.json): pass --overwrite to replace "
                "it, or choose another --output"
            )
        return problems

    def students(self) -> list[StudentSettings]:
        """The settings of each student of this run: one, or one per --variants entry (validated first)."""
        return self.distill.students()

    def with_store_temperature(self, manifest: Manifest) -> TrainConfig:
        """This run with --temperature 0 made the store's default (store_temperature): what it
        trains at, and what its config.json records."""
        return replace(self, distill=self.distill.with_store_temperature(manifest))

    def optimisation(self, total_steps: int = 1) -> Optimisation:
        t = self.training
        return Optimisation(
            precision=t.precision,
            grad_accum=t.grad_accum,
            clip_grad_norm=t.clip_grad_norm,
            warmup_steps=t.warmup_steps,
            lr_schedule=t.lr_schedule,
            betas=(t.adam_beta1, t.adam_beta2),
            eps=t.adam_eps,
            total_steps=max(1, total_steps),
            strategy=self.scale.strategy,
            gradient_checkpointing=t.gradient_checkpointing,
        )
