"""The built-in models, datasets, augmentations and tokenizers, by name: the one way in to trainer.builtin.

Light on purpose (no torch, no Ray): `--help` and config validation list and check these names
without loading anything. Each entry names the function that makes the thing; `make()` imports
it only when the thing is needed.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Builtin:
    name: str
    about: str  # one line for --help
    maker: str  # "package.module:function", called with `args`
    args: tuple = ()
    kind: str = ""  # datasets: "features" or "text"; models: "teacher" or "student"
    architecture: str = ""  # trained teachers: the untrained module, which replicas fill with the driver's weights

    def make(self, *extra: Any) -> Any:
        """What the maker returns for this entry's args."""
        return _call(self.maker, *self.args, *extra)

    def make_untrained(self) -> Any:
        """A trained teacher's architecture with fresh weights (replicas load the driver's into it)."""
        return _call(self.architecture, *self.args) if self.architecture else self.make()

    def function(self) -> Any:
        """The maker itself (an augmentation is a function, not something a function makes)."""
        return _attribute(self.maker)


def _attribute(maker: str) -> Any:
    module, name = maker.split(":")
    return getattr(importlib.import_module(module), name)


def _call(maker: str, *args: Any) -> Any:
    return _attribute(maker)(*args)


_DIGITS = "trainer.builtin.digits"
_LM = "trainer.builtin.stdlib.example"

MODELS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            "digits-cnn",
            "the digits teacher, a CNN of 151k parameters (trained once, cached)",
            f"{_DIGITS}:load_teacher",
            kind="teacher",
            architecture=f"{_DIGITS}:DigitsCNN",
        ),
        Builtin(
            "digits-mlp",
            "a digits student: one hidden layer of 16 units (1.2k parameters)",
            f"{_DIGITS}:student",
            (16,),
            kind="student",
        ),
        Builtin("digits-mlp-tiny", "a digits student: 8 hidden units", f"{_DIGITS}:student", (8,), kind="student"),
        Builtin("digits-mlp-wide", "a digits student: 64 hidden units", f"{_DIGITS}:student", (64,), kind="student"),
        *(
            b
            for name, vocab in (
                ("stdlib-gpt", "bytes, V=256"),
                ("stdlib-gpt-bpe8192", "--tokenizer bpe:8192"),
                ("stdlib-gpt-bpe32k", "--tokenizer bpe:32768"),
            )
            for b in (
                Builtin(
                    name,
                    f"a GPT teacher on the stdlib text ({vocab}; trained once, cached)",
                    f"{_LM}:load_teacher",
                    (name,),
                    kind="teacher",
                    architecture=f"{_LM}:teacher_architecture",
                ),
                Builtin(
                    f"{name}-student", f"the small GPT student of {name}", f"{_LM}:student", (name,), kind="student"
                ),
            )
        ),
    )
}

DATASETS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            "digits",
            "scikit-learn's 8x8 digits, train split (1,437 rows)",
            f"{_DIGITS}_data:load_split",
            ("train",),
            "features",
        ),
        Builtin(
            "digits-fewlabels",
            "the digits train split, labels kept on ~10% of rows",
            f"{_DIGITS}_data:load_split",
            ("train-fewlabels",),
            "features",
        ),
        Builtin("digits-eval", "the digits eval split (360 rows)", f"{_DIGITS}_data:load_split", ("eval",), "features"),
        # Text datasets: the maker lists the files; the dump tokenises and packs them into blocks.
        Builtin(
            "stdlib",
            "the Python standard library's sources, train split (1,702 files)",
            "trainer.builtin.stdlib.corpus:corpus_files",
            ("train", None),
            "text",
        ),
        Builtin(
            "stdlib-eval",
            "the stdlib sources, eval split (88 files)",
            "trainer.builtin.stdlib.corpus:corpus_files",
            ("eval", None),
            "text",
        ),
        Builtin(
            "stdlib-small",
            "the first 40 files of the stdlib train split",
            "trainer.builtin.stdlib.corpus:corpus_files",
            ("train", 40),
            "text",
        ),
        Builtin(
            "stdlib-small-eval",
            "the first 8 files of the stdlib eval split",
            "trainer.builtin.stdlib.corpus:corpus_files",
            ("eval", 8),
            "text",
        ),
    )
}

AUGMENTS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            "digits-shift-rotate",
            "up to 15 degrees, scale 0.9-1.1, one-pixel shifts, bilinear",
            f"{_DIGITS}:shift_rotate",
        ),
    )
}

BPE_SPEC = re.compile(r"^bpe:(\d+)$")


def is_text(dataset: str) -> bool:
    return dataset in DATASETS and DATASETS[dataset].kind == "text"


def text_identity(dataset: str) -> dict:
    """What a manifest records about a built-in text dataset's corpus: which files, exactly."""
    entry = DATASETS[dataset]
    return _call("trainer.builtin.stdlib.corpus:identity", *entry.args)


def bpe_tokenizer_json(vocab_size: int) -> str:
    """The `bpe:N` tokenizer: trained once on the stdlib train split, then cached."""
    return _call("trainer.builtin.stdlib.bpe:stdlib_bpe_json", vocab_size)


def names(registry: dict[str, Builtin], kind: str = "") -> str:
    return ", ".join(n for n, b in registry.items() if not kind or b.kind == kind)
