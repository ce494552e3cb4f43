"""What decides the shape of a store's shards: the StoreLayout and its parts.

Each part is a frozen dataclass with `to_json()` (its manifest object), `from_json()` (tolerant:
it keeps what it finds) and `problems()` (every rule it breaks, as short phrases the caller puts
in context: a manifest parser says the store is damaged, a job names the flag). The layout is
what writers, readers, codecs and shard validation agree on; it replaces loose keyword bags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from logitstore.codec import Codec

BACKENDS = ("zarr", "arrow")
SELECTIONS = ("topk", "sample", "hybrid")
INDEX_DTYPES = ("uint16", "uint32")
VALUE_DTYPE = "float32"  # what a reader returns for logits and normalisers, whatever the codec stores
TOKENIZER_NAME = "tokenizer.json"  # a `tokenizers` tokenizer saved at the store's root
TOKENIZER_DIR = "tokenizer"  # or a Hugging Face tokenizer's files, in this directory
INPUT_KINDS = ("tokens",)
MAX_DRAWS = MAX_VIEWS = 65535


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def index_dtype_for(vocab_size: int) -> str:
    """Narrowest index dtype that holds every class id of a vocabulary."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


@dataclass(frozen=True)
class Selection:
    """What is stored per position: the exact top-k (`topk`), or also `draws` ids drawn from the
    teacher at `temperature` (`sample`: from the whole distribution; `hybrid`: from the tail
    beyond the top-k), seeded by `seed` and the sample id. An adaptive `topk` (`top_p` set) holds
    per position the fewest classes whose mass at T = 1 reaches `top_p`, at least `min_k` and at
    most the layout's top_k."""

    kind: str = "topk"
    draws: int = 0
    temperature: float | None = None
    seed: int | None = None
    top_p: float | None = None
    min_k: int | None = None

    @property
    def sampled(self) -> bool:
        return self.kind != "topk"

    @property
    def adaptive(self) -> bool:
        return self.top_p is not None

    def problems(self, temperatures: tuple[float, ...] = (), top_k: int | None = None) -> list[str]:
        if self.kind not in SELECTIONS:
            return [f"selection kind {self.kind!r} is unknown (expected {', '.join(SELECTIONS)})"]
        if self.adaptive or self.min_k is not None:
            return self._adaptive_problems(top_k)
        if not self.sampled:
            return []
        out = []
        if not _is_int(self.draws) or not 1 <= self.draws <= MAX_DRAWS:
            out.append(f"selection draws {self.draws!r} is out of range (1..{MAX_DRAWS})")
        t = self.temperature
        if not _is_number(t) or not (t > 0 and math.isfinite(t)):
            out.append(f"selection temperature {t!r} must be a positive number")
        elif temperatures and not any(math.isclose(t, r, rel_tol=1e-9) for r in temperatures):
            out.append(f"selection temperature {t:g} is not one of the recorded temperatures")
        if self.seed is not None and not _is_int(self.seed):
            out.append(f"selection seed {self.seed!r} must be an integer")
        return out

    def _adaptive_problems(self, top_k: int | None) -> list[str]:
        if self.sampled:
            return [f"adaptive top-k (top_p) applies to the topk selection only, not {self.kind}"]
        out = []
        p, a = self.top_p, self.min_k
        if not _is_number(p) or not 0 < p <= 1:
            out.append(f"selection top_p {p!r} must lie in (0, 1]")
        if not _is_int(a) or a < 1:
            out.append(f"selection min_k {a!r} must be an integer >= 1")
        elif _is_int(top_k) and a > top_k:
            out.append(f"selection min_k {a} exceeds top_k {top_k} (the most a position holds)")
        return out

    def to_json(self) -> dict:
        if self.adaptive:
            return {"kind": self.kind, "top_p": self.top_p, "min_k": self.min_k}
        if not self.sampled:
            return {"kind": self.kind}
        out = {"kind": self.kind, "draws": self.draws, "temperature": self.temperature}
        return out if self.seed is None else {**out, "seed": self.seed}

    @staticmethod
    def from_json(obj: Any) -> Selection:
        if not isinstance(obj, dict):
            return Selection(kind=repr(obj))
        return Selection(
            kind=obj.get("kind"),
            draws=obj.get("draws", 0),
            temperature=obj.get("temperature"),
            seed=obj.get("seed"),
            top_p=obj.get("top_p"),
            min_k=obj.get("min_k"),
        )


@dataclass(frozen=True)
class Views:
    """`count` augmented views per sample, made by the augmentation named `augment` from `seed`."""

    count: int
    augment: str
    seed: int

    def problems(self) -> list[str]:
        out = []
        if not _is_int(self.count) or not 1 <= self.count <= MAX_VIEWS:
            out.append(f"views count {self.count!r} is out of range (1..{MAX_VIEWS})")
        if not isinstance(self.augment, str) or not self.augment:
            out.append("views augment must name the augmentation")
        if not _is_int(self.seed):
            out.append(f"views seed {self.seed!r} must be an integer")
        return out

    def to_json(self) -> dict:
        return {"count": self.count, "augment": self.augment, "seed": self.seed}

    @staticmethod
    def from_json(obj: Any) -> Views:
        obj = obj if isinstance(obj, dict) else {}
        return Views(count=obj.get("count"), augment=obj.get("augment"), seed=obj.get("seed"))


@dataclass(frozen=True)
class TokenizerRef:
    """The tokenizer the store's token ids come from: its kind and vocabulary; for a tokenizer that
    is a file, the file saved beside the manifest (always `tokenizer.json`) and its sha256; for a
    Hugging Face tokenizer (kind `hf`), its files under `tokenizer/` by name with their sha256, and
    the sha256 of its chat template."""

    kind: str
    vocab_size: int
    file: str | None = None
    sha256: str | None = None
    files: dict[str, str] | None = None
    chat_template_sha256: str | None = None

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.kind, str) or not self.kind:
            out.append("tokenizer kind must be a non-empty string")
        if not _is_int(self.vocab_size) or self.vocab_size < 1:
            out.append(f"tokenizer vocab_size {self.vocab_size!r} must be a positive integer")
        if self.file is not None and (self.file != TOKENIZER_NAME or not _is_hex64(self.sha256)):
            out.append(f"tokenizer file must be {TOKENIZER_NAME!r} with its sha256")
        if self.files is not None and (
            not isinstance(self.files, dict)
            or not self.files
            or not all(_is_plain_name(n) and _is_hex64(h) for n, h in self.files.items())
        ):
            out.append(f"tokenizer files must map plain file names under {TOKENIZER_DIR}/ to their sha256")
        if self.chat_template_sha256 is not None and not _is_hex64(self.chat_template_sha256):
            out.append("tokenizer chat_template_sha256 must be a sha256")
        return out

    def to_json(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind, "vocab_size": self.vocab_size}
        if self.file is not None:
            out.update(file=self.file, sha256=self.sha256)
        if self.files is not None:
            out["files"] = dict(sorted(self.files.items()))
        if self.chat_template_sha256 is not None:
            out["chat_template_sha256"] = self.chat_template_sha256
        return out

    @staticmethod
    def from_json(obj: Any) -> TokenizerRef:
        obj = obj if isinstance(obj, dict) else {}
        return TokenizerRef(
            kind=obj.get("kind"),
            vocab_size=obj.get("vocab_size"),
            file=obj.get("file"),
            sha256=obj.get("sha256"),
            files=obj.get("files"),
            chat_template_sha256=obj.get("chat_template_sha256"),
        )


@dataclass(frozen=True)
class Inputs:
    """What a store carries of its inputs: `tokens` = every sample's token ids and loss mask
    (blocks of at most `seq_len` tokens), so a student needs no dataset."""

    kind: str = "tokens"
    seq_len: int = 0

    def problems(self) -> list[str]:
        out = []
        if self.kind not in INPUT_KINDS:
            out.append(f"inputs kind {self.kind!r} is unknown (expected {', '.join(INPUT_KINDS)})")
        if not _is_int(self.seq_len) or self.seq_len < 2:
            out.append(f"inputs seq_len {self.seq_len!r} must be an integer >= 2")
        return out

    def to_json(self) -> dict:
        return {"kind": self.kind, "seq_len": self.seq_len}

    @staticmethod
    def from_json(obj: Any) -> Inputs:
        obj = obj if isinstance(obj, dict) else {}
        return Inputs(kind=obj.get("kind"), seq_len=obj.get("seq_len"))


FEATURE_PROJECTIONS = ("orthogonal",)
FEATURE_CODECS = ("int8",)
FEATURE_FILE = "feature_projection.bin"


@dataclass(frozen=True)
class Features:
    """The teacher's hidden states after `layers` (numbered as Hugging Face's hidden_states), of
    `widths` per position, each projected to `dim` by a fixed `projection` made from `seed` (saved
    in the store's projection file, of `sha256`; "" until the writer saved it) and quantized by `codec`."""

    layers: tuple[int, ...]
    widths: tuple[int, ...]
    dim: int
    seed: int
    projection: str = "orthogonal"
    codec: str = "int8"
    sha256: str = ""

    def __post_init__(self) -> None:
        for name in ("layers", "widths"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(value) if isinstance(value, (list, tuple)) else ())

    @property
    def count(self) -> int:
        return len(self.layers)

    def problems(self, committed: bool = True) -> list[str]:
        out = []
        if not self.layers or not all(_is_int(v) and 0 <= v < 2**31 for v in self.layers):
            out.append("features layers must be a non-empty list of layer numbers >= 0")
        elif len(set(self.layers)) != len(self.layers):
            out.append("features layers lists a layer twice")
        if not _is_int(self.dim) or not 1 <= self.dim <= 65535:
            out.append(f"features dim {self.dim!r} must be an integer in 1..65535")
        elif len(self.widths) != len(self.layers) or not all(_is_int(w) and self.dim <= w < 2**31 for w in self.widths):
            out.append(f"features widths must give each layer's width, each at least dim {self.dim}")
        if not _is_int(self.seed):
            out.append(f"features seed {self.seed!r} must be an integer")
        if self.projection not in FEATURE_PROJECTIONS:
            out.append(
                f"features projection {self.projection!r} is unknown (expected {', '.join(FEATURE_PROJECTIONS)})"
            )
        if self.codec not in FEATURE_CODECS:
            out.append(f"features codec {self.codec!r} is unknown (expected {', '.join(FEATURE_CODECS)})")
        if committed and not _is_hex64(self.sha256):
            out.append("features sha256 must be the projection file's sha256")
        return out

    def to_json(self) -> dict:
        return {
            "layers": list(self.layers),
            "widths": list(self.widths),
            "dim": self.dim,
            "projection": self.projection,
            "seed": self.seed,
            "file": FEATURE_FILE,
            "sha256": self.sha256,
            "codec": self.codec,
        }

    @staticmethod
    def from_json(obj: Any) -> Features:
        obj = obj if isinstance(obj, dict) else {}
        f = Features(
            layers=obj.get("layers"),
            widths=obj.get("widths"),
            dim=obj.get("dim"),
            seed=obj.get("seed"),
            projection=obj.get("projection"),
            codec=obj.get("codec"),
            sha256=obj.get("sha256"),
        )
        return f if obj.get("file") == FEATURE_FILE else replace(f, projection=f"file {obj.get('file')!r}")


def _is_plain_name(value: Any) -> bool:
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class StoreLayout:
    """Everything that decides how a store's shards look: backend, k, vocabulary (and its index
    dtype), recorded temperatures, shard size, selection, codec and views. Writers validate every
    shard against it; readers decode and check with it; the manifest records it."""

    backend: str
    top_k: int
    vocab_size: int
    temperatures: tuple[float, ...]
    shard_size: int
    selection: Selection = field(default_factory=Selection)
    codec: Codec = field(default_factory=Codec)
    views: Views | None = None
    index_dtype: str = ""  # "" = the narrowest that holds the vocabulary
    inputs: Inputs | None = None  # the shards carry their samples' tokens and loss masks
    features: Features | None = None  # the shards carry the teacher's projected hidden states

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures", tuple(self.temperatures))
        if not self.index_dtype and _is_int(self.vocab_size) and self.vocab_size > 0:
            object.__setattr__(self, "index_dtype", index_dtype_for(self.vocab_size))

    @staticmethod
    def make(
        *,
        backend: str,
        top_k: int,
        vocab_size: int,
        temperatures,
        shard_size: int,
        selection: Selection = Selection(),
        index_codec: str = "plain",
        value_codec: str = "float32",
        value_bits: int = 0,
        views: Views | None = None,
        inputs: Inputs | None = None,
        features: Features | None = None,
    ) -> StoreLayout:
        temperatures = tuple(float(t) for t in temperatures)
        codec = Codec.make(index_codec, value_codec, value_bits, temperatures)
        return StoreLayout(
            backend=backend,
            top_k=top_k,
            vocab_size=vocab_size,
            temperatures=temperatures,
            shard_size=shard_size,
            selection=selection,
            codec=codec,
            views=views,
            inputs=inputs,
            features=features,
        )

    @property
    def draws(self) -> int:
        """Sampled entries per position (0 for a top-k store)."""
        return int(self.selection.draws) if self.selection.sampled else 0

    @property
    def num_views(self) -> int:
        """Augmented views per sample (0: the inputs as they are)."""
        return int(self.views.count) if self.views else 0

    @property
    def format_version(self) -> int:
        """The lowest format version that holds this layout (FORMAT.md, versions)."""
        if self.features:
            return 9
        if self.selection.adaptive:
            return 6
        if self.inputs:
            return 5
        if self.views:
            return 4
        if not self.codec.is_default:
            return 3
        return 2 if self.selection.sampled else 1

    def temperature_index(self, temperature: float) -> int:
        """Column of `logsumexp` that holds temperature T; ValueError when T was not recorded."""
        for i, t in enumerate(self.temperatures):
            if math.isclose(t, temperature, rel_tol=1e-9, abs_tol=1e-12):
                return i
        raise ValueError(temperature)

    def problems(self) -> list[str]:
        out = []
        if self.backend not in BACKENDS:
            out.append(f"backend {self.backend!r} is unknown (expected {' or '.join(BACKENDS)})")
        if not _is_int(self.vocab_size) or self.vocab_size < 1:
            out.append(f"vocab_size {self.vocab_size!r} must be a positive integer")
        if not _is_int(self.top_k) or self.top_k < 1:
            out.append(f"top_k {self.top_k!r} must be a positive integer")
        elif _is_int(self.vocab_size) and self.top_k > self.vocab_size:
            out.append(f"top_k {self.top_k} exceeds vocab_size {self.vocab_size}")
        if self.index_dtype not in INDEX_DTYPES:
            out.append(f"index_dtype {self.index_dtype!r} is unknown (expected uint16 or uint32)")
        elif _is_int(self.vocab_size) and self.vocab_size > 0 and self.index_dtype != index_dtype_for(self.vocab_size):
            out.append(f"index_dtype must be {index_dtype_for(self.vocab_size)} for a vocabulary of {self.vocab_size}")
        temps = self.temperatures
        if not temps or not all(_is_number(t) and t > 0 and math.isfinite(t) for t in temps):
            out.append("temperatures must be a non-empty list of positive numbers")
        elif len(set(temps)) != len(temps):
            out.append("temperatures lists a temperature twice")
        if not _is_int(self.shard_size) or self.shard_size < 1:
            out.append(f"shard_size {self.shard_size!r} must be a positive integer")
        out += self.selection.problems(temps, self.top_k)
        out += self.codec.problems()
        if self.views is not None:
            out += self.views.problems()
        if self.inputs is not None:
            out += self.inputs.problems()
            if self.views is not None:
                out.append("a store of views cannot carry token inputs (views apply to one input per sample)")
        if self.features is not None:
            out += self.features.problems(committed=False)
        return out

    def to_json(self) -> dict:
        """The manifest keys of the layout."""
        out = {
            "backend": self.backend,
            "top_k": self.top_k,
            "vocab_size": self.vocab_size,
            "index_dtype": self.index_dtype,
            "value_dtype": VALUE_DTYPE,
            "temperatures": list(self.temperatures),
            "shard_size": self.shard_size,
            "selection": self.selection.to_json(),
            "codec": self.codec.to_json(),
        }
        if self.views is not None:
            out["views"] = self.views.to_json()
        if self.inputs is not None:
            out["inputs"] = self.inputs.to_json()
        if self.features is not None:
            out["features"] = self.features.to_json()
        return out

    @staticmethod
    def from_json(raw: dict) -> StoreLayout:
        """The layout recorded in a manifest (absent selection/codec: their version-1 defaults)."""
        temps = raw.get("temperatures")
        temps = tuple(float(t) if _is_number(t) else t for t in temps) if isinstance(temps, list) else ()
        codec = raw.get("codec", {"index": "plain", "values": "float32"})
        return StoreLayout(
            backend=raw.get("backend"),
            top_k=raw.get("top_k"),
            vocab_size=raw.get("vocab_size"),
            temperatures=temps,
            shard_size=raw.get("shard_size"),
            selection=Selection.from_json(raw.get("selection", {"kind": "topk"})),
            codec=Codec.from_json(codec, temps) if isinstance(codec, dict) else Codec(index=repr(codec)),
            views=None if raw.get("views") is None else Views.from_json(raw["views"]),
            inputs=None if raw.get("inputs") is None else Inputs.from_json(raw["inputs"]),
            features=None if raw.get("features") is None else Features.from_json(raw["features"]),
            index_dtype=raw.get("index_dtype")
            if isinstance(raw.get("index_dtype"), str)
            else repr(raw.get("index_dtype")),
        )
