"""The stores of a training run, opened once on the driver, and the checks of its inputs against
them: the data must be the data the stores were dumped from, every student's output width must
fit the store's ids; and the figures of a padded vocabulary that metrics.json reports.

The store's first shard serves all three (a few rows to probe a student, the ids a narrower
student must cover, the teacher's tail mass): it is read and decoded once per run, when first asked for.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from logitstore import Manifest, ShardData, StoreReader, read_manifest
from logitstore.atomic import atomic_write_text
from logitstore.storage import open_storage
from trainer.errors import ConfigError, DataError
from trainer.inputs import registry
from trainer.inputs.datasets import (
    DatasetFingerprint,
    TextOptions,
    fingerprint_dataset,
    fingerprint_rows,
    load_dataset,
    read_here,
)
from trainer.inputs.models import build_model, hf_model_facts, probe_width
from trainer.inputs.specs import HF_PREFIX, LM_SEQ_LEN
from trainer.student import vocab
from trainer.student.config import Data, StudentSettings, TrainConfig
from trainer.student.crosstok import CrossTokenizer, TextTokenizer, align_window
from trainer.student.join import store_rows
from trainer.student.students import enable_gradient_checkpointing


@dataclass(frozen=True)
class RunStores:
    """The stores of a run, each manifest parsed once, how their text was tokenised, and the
    training store's first shard (read when first needed)."""

    store: str
    manifest: Manifest
    text: TextOptions
    eval_manifest: Manifest | None = None
    eval_text: TextOptions | None = None
    cross: CrossTokenizer | None = None  # a student of another tokenizer than the store's

    def with_student_tokenizer(self, cfg: TrainConfig) -> RunStores:
        """These stores for a student of another tokenizer (--student-tokenizer, or an hf: student's
        own when it differs from the store's): its eval text tokenised with it; else as they are."""
        spec = cfg.data.student_tokenizer or _students_own_tokenizer(cfg, self)
        if not spec:
            return self
        problems = replace(cfg.data, student_tokenizer=spec).cross_tokenizer_problems(self.manifest)
        if problems:
            raise ConfigError(problems)
        cross = CrossTokenizer(open_storage(self.store).uri, spec, cfg.distill.cross_tokenizer)
        eval_text = None if self.eval_text is None else _student_text(spec, self.text)
        return replace(self, cross=cross, eval_text=eval_text)

    @staticmethod
    def open(data: Data) -> RunStores:
        manifest = read_manifest(data.store)
        text = _text_options(data.store, manifest)
        if not data.eval_store:
            return RunStores(data.store, manifest, text, None, text if data.eval_dataset else None)
        eval_manifest = read_manifest(data.eval_store)
        if eval_manifest.teacher_weights != manifest.teacher_weights:
            raise DataError(
                f"--eval-store {data.eval_store} was dumped by another teacher than --store {data.store}: dump "
                "both with the same teacher"
            )
        eval_text = _text_options(data.eval_store, eval_manifest)
        if eval_text.tokenizer_json != text.tokenizer_json or _hf_files(eval_manifest) != _hf_files(manifest):
            raise DataError(
                f"--eval-store {data.eval_store} was tokenised with another tokenizer than --store "
                f"{data.store}: dump it with --tokenizer {Path(data.store) / 'tokenizer.json'}"
            )
        return RunStores(data.store, manifest, text, eval_manifest, eval_text)

    @cached_property
    def first_shard(self) -> ShardData:
        """Shard 0 of the training store, decoded (checked against its checksum) once."""
        return StoreReader(self.store, manifest=self.manifest).read_shard(0)

    def first_rows(self) -> dict:
        """A few rows of a store that carries its inputs, as a dataset would give them."""
        data = self.first_shard
        return store_rows(data.select(np.arange(min(2, data.num_samples))), self.manifest.layout.inputs.seq_len)

    def has_hf_tokenizer(self) -> bool:
        """The store's Hugging Face tokenizer goes beside every export (not a student of another tokenizer's)."""
        return self.cross is None and self.manifest.tokenizer is not None and self.manifest.tokenizer.kind == "hf"

    def tokenizer_dir(self) -> Path | None:
        """A local copy of the tokenizer files that go beside the final export: the store's Hugging
        Face tokenizer (checked), or a student of another tokenizer's own; None without them."""
        if self.cross is not None:
            return self.cross.saved_tokenizer()
        return StoreReader(self.store, manifest=self.manifest).tokenizer_dir() if self.has_hf_tokenizer() else None


def _text_options(store: str, manifest: Manifest) -> TextOptions:
    """Tokenise and pack text exactly as the dump did: the store's own tokenizer, block length and mask."""
    reader = StoreReader(store, manifest=manifest)
    hf = reader.tokenizer_dir()
    train_on = manifest.config.get("train_on", "auto")
    return TextOptions(
        reader.tokenizer_json(),
        int(manifest.config.get("seq_len", LM_SEQ_LEN)),
        hf_tokenizer=None if hf is None else str(hf),
        train_on="" if train_on == "auto" else str(train_on),
    )


def _students_own_tokenizer(cfg: TrainConfig, stores: RunStores) -> str:
    """An hf: student directory's tokenizer when it is not the store's (another vocabulary); "" otherwise."""
    spec = cfg.students()[0].student
    if not spec.startswith(HF_PREFIX) or stores.manifest.tokenizer is None or stores.manifest.layout.inputs is None:
        return ""
    directory = Path(spec[len(HF_PREFIX) :])
    if not (directory / "tokenizer.json").is_file() and not (directory / "tokenizer_config.json").is_file():
        return ""
    theirs = TextTokenizer.of_store(StoreReader(stores.store, manifest=stores.manifest)).tok
    mine = TextTokenizer(str(directory)).tok
    return "" if theirs.get_vocab() == mine.get_vocab() else str(directory)


def _student_text(spec: str, text: TextOptions) -> TextOptions:
    """How eval text is tokenised for a student of tokenizer `spec` (blocks as long as the store's)."""
    if spec == "bytes":
        raise ConfigError(
            ["--eval-dataset with --student-tokenizer bytes is not built yet: use a bpe:N or HF tokenizer"]
        )
    match = registry.BPE_SPEC.match(spec)
    if match:  # the built-in BPE as a tokenizer.json file, which text files are tokenised with
        path = Path(tempfile.gettempdir()) / f"logitstore-bpe{match.group(1)}-{os.getuid()}.json"
        atomic_write_text(path, registry.bpe_tokenizer_json(int(match.group(1))))
        spec = str(path)
    return TextOptions(None, text.seq_len, hf_tokenizer=spec, train_on=text.train_on)


def _hf_files(manifest: Manifest) -> dict | None:
    return None if manifest.tokenizer is None else manifest.tokenizer.files


def check_inputs(cfg: TrainConfig, stores: RunStores) -> None:
    """The passes over the data that check it against the stores, and every student's width. A
    store that carries its inputs is its own data: a --dataset given beside it must match it.
    Small local data is read here, in the driver (read_here): no Ray Data pass, seconds saved."""
    data = cfg.data
    if data.dataset:
        train = _Data(data.dataset, "--dataset", stores.text)
        rows = train.first_rows()
    else:
        rows = stores.first_rows()
    for spec in dict.fromkeys(s.student for s in cfg.students()):
        width = student_width(spec, rows, cfg.training.gradient_checkpointing)
        if stores.cross is None:
            check_student_width(width, stores, spec)
        else:
            check_cross_student(width, stores, spec)
    if data.dataset:
        check_store_matches(stores.manifest, train.fingerprint(), data.dataset, data.store, "--dataset")
    if stores.eval_manifest is not None and data.eval_dataset:
        evaluated = _Data(data.eval_dataset, "--eval-dataset", stores.eval_text)
        check_store_matches(
            stores.eval_manifest, evaluated.fingerprint(), data.eval_dataset, data.eval_store, "--eval-dataset"
        )


class _Data:
    """A dataset to check: its rows read here when it is small, else a Ray Dataset."""

    def __init__(self, spec: str, flag: str, text: TextOptions) -> None:
        self.spec, self.rows = spec, read_here(spec, flag, text)
        self.ds = load_dataset(spec, flag, text) if self.rows is None else None

    def first_rows(self) -> dict:
        if self.rows is None:
            return self.ds.take_batch(2, batch_format="numpy")
        return {key: value[:2] for key, value in self.rows.items()}

    def fingerprint(self) -> DatasetFingerprint:
        return fingerprint_dataset(self.ds, self.spec) if self.rows is None else fingerprint_rows(self.rows, self.spec)


def check_store_matches(manifest: Manifest, fp: DatasetFingerprint, spec: str, store: str, flag: str) -> None:
    """The dataset must be exactly the data the store was dumped from (ids and inputs; labels may differ)."""
    recorded = manifest.dataset
    if fp.ids_sha256 != recorded.get("ids_sha256"):
        raise DataError(
            f"{flag} {spec} does not match store {store}: the store covers {recorded.get('num_samples')} samples of "
            f"{recorded.get('spec')!r}, the dataset has {fp.num_samples} with other ids; pass the dataset the "
            "store was dumped from, or dump a store for this one"
        )
    if fp.inputs_sha256 != recorded.get("inputs_sha256"):
        raise DataError(
            f"{flag} {spec} does not match store {store}: same ids, but the inputs differ from those the teacher saw; "
            f"pass the dataset the store was dumped from, or dump the store again"
        )


def student_width(spec: str, rows: dict, gradient_checkpointing: bool) -> int:
    """The student's output width, from a few real rows. An hf: student is built on the meta
    device and its width read from its output layer: the driver never loads (nor copies from object
    storage) its weights, which for an LM-scale student are gigabytes."""
    if spec.startswith(HF_PREFIX):
        with torch.device("meta"):
            student = build_model(spec, "--student", pretrained=False)
        if gradient_checkpointing:
            enable_gradient_checkpointing(student, spec)
        return hf_model_facts(spec, "--student").vocab_size
    student = build_model(spec, "--student")
    if gradient_checkpointing:
        enable_gradient_checkpointing(student, spec)
    return probe_width(student, rows, "--student", spec)


def check_cross_student(width: int, stores: RunStores, spec: str) -> None:
    """A student of another tokenizer: its outputs hold that tokenizer's ids; what alignment keeps of
    the first shard is printed (what is dropped, FORMAT-free: trainer/student/crosstok.py)."""
    cross = stores.cross
    tokenizer = TextTokenizer(cross.student_tokenizer)
    if width < tokenizer.vocab_size:
        raise DataError(
            f"--student {spec} outputs {width} classes but its tokenizer {cross.student_tokenizer} has "
            f"{tokenizer.vocab_size} tokens: use a student with at least that many outputs"
        )
    teacher = TextTokenizer.of_store(StoreReader(stores.store, manifest=stores.manifest))
    print(align_window(stores.first_shard, teacher, tokenizer)[2].line() + " (first shard)", file=sys.stderr)


def check_student_width(width: int, stores: RunStores, spec: str) -> int:
    """The student's output width checked against the store (trainer/student/vocab.py: a padded
    vocabulary may differ from the teacher's when every id fits)."""
    vocab.check_width(width, stores.manifest, spec, stores.store)
    if width < stores.manifest.vocab_size:
        vocab.check_shard(stores.first_shard, width, spec, stores.store, stores.manifest.vocab_size)
        if stores.eval_manifest is not None:
            vocab.check_width(width, stores.eval_manifest, spec, stores.store)
    return width


def vocab_padding(stores: RunStores, students: list[StudentSettings], history: list[dict]) -> dict:
    """{"vocab_padding": ...} when a student's output width differs from the store's vocabulary:
    the widths, and per student the teacher's mean tail mass at its temperature over the first
    shard, the most the teacher put on ids that student cannot represent (the store keeps the
    tail as a whole: the exact share beyond the width is not stored)."""
    manifest = stores.manifest
    # (a width is 0 where a restarted process trained no batch before its report)
    widths = next((e["output_widths"] for e in history if e.get("output_widths") and all(e["output_widths"])), None)
    if widths is None or all(w == manifest.vocab_size for w in widths):
        return {}
    first = stores.first_shard
    return {
        "vocab_padding": {
            "store_vocab_size": manifest.vocab_size,
            "student_widths": widths,
            "tail_mass_upper_bound": [
                vocab.tail_mass(first, manifest, s.temperature) if w < manifest.vocab_size else 0.0
                for s, w in zip(students, widths)
            ],
            "tail_mass_positions": first.num_positions,
        }
    }
