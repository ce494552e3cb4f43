"""The manifest: the store's commit marker and its only source of truth about shards."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from logitstore.errors import ManifestError, StoreNotFoundError

FORMAT_NAME = "logitstore"
FORMAT_VERSION = 4  # the newest this code reads and writes; stores are written with the lowest version that holds them
SELECTIONS = ("topk", "sample", "hybrid")
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"  # the only extra file a store may hold at its root
BACKENDS = ("zarr", "arrow")
SHARD_SUFFIX = {"zarr": ".zarr", "arrow": ".arrow"}
_SHARD_NAME = re.compile(r"^shards/[0-9]{5,9}\.(zarr|arrow)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def shard_name(index: int, backend: str) -> str:
    """Relative path of shard `index` inside a store (POSIX separators, as in the manifest)."""
    return f"shards/{index:05d}{SHARD_SUFFIX[backend]}"


@dataclass(frozen=True)
class ShardInfo:
    index: int
    name: str
    first_id: int
    last_id: int
    num_samples: int
    num_positions: int
    num_bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    backend: str
    top_k: int
    vocab_size: int
    index_dtype: str
    value_dtype: str
    temperatures: list[float]
    num_samples: int
    num_positions: int
    shard_size: int
    teacher: dict[str, Any]
    dataset: dict[str, Any]
    shards: list[ShardInfo]
    config: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    # {"kind": "topk"}, or {"kind": "sample" | "hybrid", "draws": m, "temperature": T_s}
    selection: dict[str, Any] = field(default_factory=lambda: {"kind": "topk"})
    # None for data that is not text; {"kind": "bytes", "vocab_size": 256}; or
    # {"kind": "bpe", "vocab_size": n, "file": "tokenizer.json", "sha256": hex}
    tokenizer: dict[str, Any] | None = None
    # sha256 of everything that decided the content (arguments, teacher weights, data): a rerun
    # of the same dump finds the store already complete (informative; "" when unknown)
    content_sha256: str = ""
    # how the top-k arrays are encoded (logitstore/codec.py); the default is version 1's layout
    codec: dict[str, Any] = field(default_factory=lambda: {"index": "plain", "values": "float32"})
    # None, or {"count": V, "augment": spec, "seed": s}: V augmented views per sample (version 4)
    views: dict[str, Any] | None = None
    format: str = FORMAT_NAME
    format_version: int = 1

    @property
    def draws(self) -> int:
        """Sampled entries per position (0 for a top-k store)."""
        return int(self.selection.get("draws", 0))

    @property
    def num_views(self) -> int:
        """Augmented views per sample (0: the inputs as they are, one position per input)."""
        return int(self.views["count"]) if self.views else 0

    @staticmethod
    def version_for(selection: dict[str, Any], codec: dict[str, Any] | None = None, views: dict[str, Any] | None = None) -> int:
        if views:
            return 4
        if codec and (codec.get("index", "plain"), codec.get("values", "float32")) != ("plain", "float32"):
            return 3
        return 1 if selection.get("kind", "topk") == "topk" else 2

    @property
    def store_codec(self):
        """The Codec object that reads and writes this store's shards."""
        from logitstore.codec import Codec

        return Codec.from_json(self.codec, self.temperatures)

    @property
    def num_bytes(self) -> int:
        return sum(s.num_bytes for s in self.shards)

    def temperature_index(self, temperature: float) -> int:
        """Column of `logsumexp` that holds temperature T; ValueError when T was not recorded."""
        for i, t in enumerate(self.temperatures):
            if math.isclose(t, temperature, rel_tol=1e-9, abs_tol=1e-12):
                return i
        raise ValueError(temperature)

    def to_json(self) -> str:
        fields = asdict(self)
        if fields["views"] is None:
            del fields["views"]  # absent, as in versions 1 to 3
        return json.dumps(fields, indent=2, sort_keys=False) + "\n"


def _require(obj: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ManifestError(f"manifest {where} lacks '{key}': the store is damaged; dump it again")
    value = obj[key]
    # bool is an int in Python; a manifest that says `true` for a count is wrong.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ManifestError(f"manifest {where}'{key}' has type bool: the store is damaged; dump it again")
    if not isinstance(value, kind):
        raise ManifestError(
            f"manifest {where}'{key}' has type {type(value).__name__}: the store is damaged; dump it again"
        )
    return value


def _count(obj: dict, key: str, where: str = "", *, minimum: int = 0) -> int:
    value = _require(obj, key, int, where)
    if value < minimum or value > 2**62:
        raise ManifestError(f"manifest {where}'{key}' = {value} is out of range: the store is damaged; dump it again")
    return value


def parse_manifest(text: str, source: str = "manifest") -> Manifest:
    """Parse and check a manifest; ManifestError names the first problem found."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno}): the store is damaged; dump it again") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{source} is not a JSON object: the store is damaged; dump it again")
    if raw.get("format") != FORMAT_NAME:
        raise ManifestError(f"{source} is not a logitstore manifest (format={raw.get('format')!r})")
    version = _require(raw, "format_version", int, "")
    if version > FORMAT_VERSION:
        raise ManifestError(
            f"store format version {version} is newer than this logitstore reads ({FORMAT_VERSION}): upgrade logitstore"
        )
    if version < 1:
        raise ManifestError(f"store format version {version} is invalid: the store is damaged; dump it again")
    backend = _require(raw, "backend", str, "")
    if backend not in BACKENDS:
        raise ManifestError(f"manifest backend {backend!r} is unknown (expected one of {', '.join(BACKENDS)})")
    top_k = _count(raw, "top_k", minimum=1)
    vocab = _count(raw, "vocab_size", minimum=1)
    if top_k > vocab:
        raise ManifestError(f"manifest top_k {top_k} exceeds vocab_size {vocab}: the store is damaged")
    index_dtype = _require(raw, "index_dtype", str, "")
    if index_dtype not in ("uint16", "uint32"):
        raise ManifestError(f"manifest index_dtype {index_dtype!r} is unknown (expected uint16 or uint32)")
    value_dtype = _require(raw, "value_dtype", str, "")
    if value_dtype != "float32":
        raise ManifestError(f"manifest value_dtype {value_dtype!r} is unknown (expected float32)")
    temps = _require(raw, "temperatures", list, "")
    if not temps or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 and math.isfinite(t) for t in temps):
        raise ManifestError("manifest temperatures must be a non-empty list of positive numbers")
    shards_raw = _require(raw, "shards", list, "")
    shards = []
    for i, s in enumerate(shards_raw):
        where = f"shard {i} "
        if not isinstance(s, dict):
            raise ManifestError(f"manifest {where}is not an object: the store is damaged; dump it again")
        name = _require(s, "name", str, where)
        if not _SHARD_NAME.match(name) or not name.endswith(SHARD_SUFFIX[backend]):
            raise ManifestError(f"manifest {where}name {name!r} is not a valid shard name for backend {backend}")
        info = ShardInfo(
            index=_count(s, "index", where),
            name=name,
            first_id=_require(s, "first_id", int, where),
            last_id=_require(s, "last_id", int, where),
            num_samples=_count(s, "num_samples", where, minimum=1),
            num_positions=_count(s, "num_positions", where),
            num_bytes=_count(s, "num_bytes", where),
            sha256=_require(s, "sha256", str, where),
        )
        if info.index != i or not _HEX64.match(info.sha256) or info.last_id < info.first_id:
            raise ManifestError(f"manifest {where}has an inconsistent index, id range or checksum: the store is damaged")
        if shards and info.first_id <= shards[-1].last_id:
            raise ManifestError(f"manifest {where}overlaps the id range of shard {i - 1}: the store is damaged")
        shards.append(info)
    selection = raw.get("selection", {"kind": "topk"})
    if not isinstance(selection, dict) or selection.get("kind") not in SELECTIONS:
        raise ManifestError(f"manifest selection {selection!r} is unknown (expected kind topk, sample or hybrid)")
    if selection["kind"] != "topk":
        if version < 2:
            raise ManifestError("manifest of format version 1 declares a sampled selection: the store is damaged")
        draws = _count(selection, "draws", "selection ", minimum=1)
        temp = selection.get("temperature")
        if draws > 65535 or not isinstance(temp, (int, float)) or isinstance(temp, bool) or not (temp > 0 and math.isfinite(temp)):
            raise ManifestError("manifest selection needs draws in 1..65535 and a positive temperature: the store is damaged")
    tokenizer = raw.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("kind"), str):
            raise ManifestError("manifest tokenizer must be an object with a 'kind': the store is damaged")
        _count(tokenizer, "vocab_size", "tokenizer ", minimum=1)
        if "file" in tokenizer and (tokenizer["file"] != TOKENIZER_NAME or not _HEX64.match(str(tokenizer.get("sha256", "")))):
            raise ManifestError(f"manifest tokenizer file must be {TOKENIZER_NAME!r} with a sha256: the store is damaged")
    codec = raw.get("codec", {"index": "plain", "values": "float32"})
    from logitstore.codec import Codec

    if not isinstance(codec, dict) or not isinstance(codec.get("bits", 0), int) or \
            Codec.from_json(codec, [float(t) for t in temps]).problems():
        raise ManifestError(f"manifest codec {codec!r} is unknown or invalid: upgrade logitstore, or the store is damaged")
    if Manifest.version_for(selection, codec) == 3 and version < 3:
        raise ManifestError(f"manifest of format version {version} declares codec {codec!r}: the store is damaged")
    views = raw.get("views")
    if views is not None:
        count, seed = (views.get("count"), views.get("seed")) if isinstance(views, dict) else (None, None)
        if not (isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= 65535 and isinstance(views.get("augment"), str)
                and views["augment"] and isinstance(seed, int) and not isinstance(seed, bool)) or version < 4:
            raise ManifestError(f"manifest views {views!r} must be {{count: 1..65535, augment: name, seed: int}} in format version 4: the store is damaged")
    manifest = Manifest(
        backend=backend,
        top_k=top_k,
        vocab_size=vocab,
        index_dtype=index_dtype,
        value_dtype=value_dtype,
        temperatures=[float(t) for t in temps],
        num_samples=_count(raw, "num_samples", minimum=1),
        num_positions=_count(raw, "num_positions"),
        shard_size=_count(raw, "shard_size", minimum=1),
        teacher=_require(raw, "teacher", dict, ""),
        dataset=_require(raw, "dataset", dict, ""),
        shards=shards,
        config=_require(raw, "config", dict, "") if "config" in raw else {},
        created_by=str(raw.get("created_by", "")),
        selection=selection,
        tokenizer=tokenizer,
        content_sha256=raw.get("content_sha256") if isinstance(raw.get("content_sha256"), str) else "",
        codec=codec,
        views=views,
        format_version=version,
    )
    if sum(s.num_samples for s in shards) != manifest.num_samples or sum(s.num_positions for s in shards) != manifest.num_positions:
        raise ManifestError("manifest sample or position counts disagree with its shards: the store is damaged")
    return manifest


def read_manifest(store: str | os.PathLike) -> Manifest:
    """The manifest of a complete store; StoreNotFoundError when there is none."""
    root = Path(store)
    path = root / MANIFEST_NAME
    if not root.exists():
        raise StoreNotFoundError(f"no store at {root}: check the path, or create one with `python -m jobs.dump_logits`")
    if not root.is_dir():
        raise StoreNotFoundError(f"{root} is a file, not a store directory: pass the store's directory")
    if not path.is_file():
        raise StoreNotFoundError(
            f"{root} holds no complete store (no {MANIFEST_NAME}; the dump did not finish): run the dump again"
        )
    size = path.stat().st_size
    if size > 256 * 1024 * 1024:
        raise ManifestError(f"{path} is {size} bytes, far beyond any real manifest: the store is damaged")
    return parse_manifest(path.read_text(encoding="utf-8"), source=str(path))


def write_manifest(store: str | os.PathLike, manifest: Manifest) -> Path:
    """Write the manifest atomically (temporary file, fsync, rename): the store's commit."""
    root = Path(store)
    final = root / MANIFEST_NAME
    tmp = root / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(manifest.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
