"""The manifest: the store's commit marker and its only source of truth about shards."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from logitstore.errors import ManifestError, StoreError, StoreNotFoundError
from logitstore.identity import content_sha256
from logitstore.layout import StoreLayout, TokenizerRef
from logitstore.planning import ShardPlan
from logitstore.storage import Storage, open_storage, shard_name

FORMAT_NAME = "logitstore"
FORMAT_VERSION = 8  # the newest this code reads and writes; stores are written with the lowest version that holds them
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_SHARD_NAME = re.compile(r"^shards/[0-9]{5,9}(\.[0-9a-f]{12})?\.(zarr|arrow|zarr\.zip)$")
OBJECT_STORE_VERSION = 7  # shard names with an attempt tag: stores written to object storage
ZIP_SHARD_VERSION = 8  # Zarr shards on object storage as one ZIP object each
__all__ = ["Manifest", "ShardInfo", "build_manifest", "parse_manifest", "read_manifest", "shard_name"]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DAMAGED = "the store is damaged; dump it again"


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

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "num_samples": self.num_samples,
            "num_positions": self.num_positions,
            "num_bytes": self.num_bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Manifest:
    """A complete store: its layout, what it was made from (teacher, dataset, tokenizer), its shards."""

    layout: StoreLayout
    num_samples: int
    num_positions: int
    teacher: dict[str, Any]
    dataset: dict[str, Any]
    shards: tuple[ShardInfo, ...]
    tokenizer: TokenizerRef | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved dump configuration (informative)
    # sha256 of everything that decided the content (logitstore.identity): a rerun of the same dump
    # finds the store already complete (informative; "" when unknown)
    content_sha256: str = ""
    created_by: str = ""
    format_version: int = 0  # 0: the layout's own (a manifest read from disk keeps the version it states)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", tuple(self.shards))
        if not self.format_version:
            object.__setattr__(self, "format_version", self.layout.format_version)

    # The layout's fields, read through the manifest where that reads better.
    backend = property(lambda self: self.layout.backend)
    top_k = property(lambda self: self.layout.top_k)
    vocab_size = property(lambda self: self.layout.vocab_size)
    index_dtype = property(lambda self: self.layout.index_dtype)
    temperatures = property(lambda self: self.layout.temperatures)
    selection = property(lambda self: self.layout.selection)
    codec = property(lambda self: self.layout.codec)
    views = property(lambda self: self.layout.views)
    draws = property(lambda self: self.layout.draws)
    num_views = property(lambda self: self.layout.num_views)

    def temperature_index(self, temperature: float) -> int:
        return self.layout.temperature_index(temperature)

    @property
    def num_bytes(self) -> int:
        return sum(s.num_bytes for s in self.shards)

    @property
    def teacher_weights(self) -> tuple[str, str | None]:
        """(fingerprint kind, digest) of the teacher's weights: equal pairs name the same weights (FORMAT.md)."""
        return self.teacher.get("weights_fingerprint", "state_dict"), self.teacher.get("weights_sha256")

    def plan(self) -> ShardPlan:
        """Which shard owns which ids (the plan the writer used)."""
        return ShardPlan(
            first_ids=np.array([s.first_id for s in self.shards], dtype=np.int64),
            last_ids=np.array([s.last_id for s in self.shards], dtype=np.int64),
            counts=np.array([s.num_samples for s in self.shards], dtype=np.int64),
        )

    def to_json(self) -> str:
        fields = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            **self.layout.to_json(),
            "num_samples": self.num_samples,
            "num_positions": self.num_positions,
            "teacher": self.teacher,
            "dataset": self.dataset,
            **({} if self.tokenizer is None else {"tokenizer": self.tokenizer.to_json()}),
            "shards": [s.to_json() for s in self.shards],
            "config": self.config,
            "content_sha256": self.content_sha256,
            "created_by": self.created_by,
        }
        return json.dumps(fields, indent=2) + "\n"


def _require(obj: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ManifestError(f"manifest {where}lacks '{key}': {_DAMAGED}")
    value = obj[key]
    # bool is an int in Python; a manifest that says `true` for a count is wrong.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ManifestError(f"manifest {where}'{key}' has type bool: {_DAMAGED}")
    if not isinstance(value, kind):
        raise ManifestError(f"manifest {where}'{key}' has type {type(value).__name__}: {_DAMAGED}")
    return value


def _count(obj: dict, key: str, where: str = "", *, minimum: int = 0) -> int:
    value = _require(obj, key, int, where)
    if value < minimum or value > 2**62:
        raise ManifestError(f"manifest {where}'{key}' = {value} is out of range: {_DAMAGED}")
    return value


def _parse_shards(raw: list, backend: str, version: int) -> list[ShardInfo]:
    shards: list[ShardInfo] = []
    for i, s in enumerate(raw):
        where = f"shard {i} "
        if not isinstance(s, dict):
            raise ManifestError(f"manifest {where}is not an object: {_DAMAGED}")
        name = _require(s, "name", str, where)
        match = _SHARD_NAME.match(name)
        suffix = match.group(2) if match else ""
        if not match or suffix.split(".")[0] != backend or (suffix == "zarr.zip" and not match.group(1)):
            raise ManifestError(f"manifest {where}name {name!r} is not a valid shard name for backend {backend}")
        needs = ZIP_SHARD_VERSION if suffix == "zarr.zip" else OBJECT_STORE_VERSION if match.group(1) else 1
        if version < needs:
            raise ManifestError(f"manifest {where}name {name!r} needs format version {needs}: {_DAMAGED}")
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
            raise ManifestError(f"manifest {where}has an inconsistent index, id range or checksum: {_DAMAGED}")
        if shards and info.first_id <= shards[-1].last_id:
            raise ManifestError(f"manifest {where}overlaps the id range of shard {i - 1}: {_DAMAGED}")
        shards.append(info)
    return shards


def _parse_layout(raw: dict, version: int) -> StoreLayout:
    for key in ("backend", "index_dtype", "value_dtype"):
        _require(raw, key, str, "")
    _count(raw, "top_k", minimum=1)
    _count(raw, "vocab_size", minimum=1)
    _require(raw, "temperatures", list, "")
    if raw["value_dtype"] != "float32":
        raise ManifestError(f"manifest value_dtype {raw['value_dtype']!r} is unknown (expected float32)")
    layout = StoreLayout.from_json(raw)
    problems = layout.problems()
    if problems:
        raise ManifestError(f"manifest layout is invalid ({'; '.join(problems)}): upgrade logitstore, or {_DAMAGED}")
    if layout.format_version > version:
        raise ManifestError(
            f"manifest of format version {version} declares what version {layout.format_version} "
            f"introduced (selection {layout.selection.kind}, codec {layout.codec.to_json()}, "
            f"views {layout.views is not None}, inputs {layout.inputs is not None}): {_DAMAGED}"
        )
    return layout


def parse_manifest(text: str, source: str = "manifest") -> Manifest:
    """Parse and check a manifest; ManifestError names the first problem found."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno}): {_DAMAGED}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{source} is not a JSON object: {_DAMAGED}")
    if raw.get("format") != FORMAT_NAME:
        raise ManifestError(f"{source} is not a logitstore manifest (format={raw.get('format')!r})")
    version = _require(raw, "format_version", int, "")
    if version > FORMAT_VERSION:
        raise ManifestError(
            f"store format version {version} is newer than this logitstore reads ({FORMAT_VERSION}): upgrade logitstore"
        )
    if version < 1:
        raise ManifestError(f"store format version {version} is invalid: {_DAMAGED}")
    layout = _parse_layout(raw, version)
    shards = _parse_shards(_require(raw, "shards", list, ""), layout.backend, version)
    tokenizer = None
    if raw.get("tokenizer") is not None:
        tokenizer = TokenizerRef.from_json(raw["tokenizer"])
        if not isinstance(raw["tokenizer"], dict) or tokenizer.problems():
            raise ManifestError(f"manifest tokenizer is invalid ({'; '.join(tokenizer.problems())}): {_DAMAGED}")
    manifest = Manifest(
        layout=layout,
        num_samples=_count(raw, "num_samples", minimum=1),
        num_positions=_count(raw, "num_positions"),
        teacher=_require(raw, "teacher", dict, ""),
        dataset=_require(raw, "dataset", dict, ""),
        shards=shards,
        tokenizer=tokenizer,
        config=_require(raw, "config", dict, "") if "config" in raw else {},
        content_sha256=raw.get("content_sha256") if isinstance(raw.get("content_sha256"), str) else "",
        created_by=str(raw.get("created_by", "")),
        format_version=version,
    )
    if (
        sum(s.num_samples for s in shards) != manifest.num_samples
        or sum(s.num_positions for s in shards) != manifest.num_positions
    ):
        raise ManifestError(f"manifest sample or position counts disagree with its shards: {_DAMAGED}")
    return manifest


def read_manifest(store: str | os.PathLike | Storage) -> Manifest:
    """The manifest of a complete store (a local path, file:// or an object-storage URI, or an
    open storage); StoreNotFoundError when there is none."""
    storage = store if isinstance(store, Storage) else open_storage(store)
    size = storage.size(MANIFEST_NAME)
    if size is None:
        if storage.top_level():
            raise StoreNotFoundError(
                f"{storage} holds no complete store (no {MANIFEST_NAME}; the dump did not finish): run the dump again"
            )
        raise StoreNotFoundError(
            f"no store at {storage}: check the path, or create one with `python -m jobs.dump_logits`"
        )
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{storage}/{MANIFEST_NAME} is {size} bytes, far beyond any real manifest: {_DAMAGED}")
    raw = storage.get(MANIFEST_NAME)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{storage}/{MANIFEST_NAME} is not UTF-8 (byte {exc.start}): {_DAMAGED}") from None
    return parse_manifest(text, source=f"{storage}/{MANIFEST_NAME}")


def names_version(shards) -> int:
    """The lowest format version that holds these shard names: 8 once a shard is a Zarr ZIP object,
    7 once a name carries an attempt (object storage), else 0 (the content decides)."""
    versions = [0]
    for s in shards:
        match = _SHARD_NAME.match(s.name)
        if match and match.group(2) == "zarr.zip":
            versions.append(ZIP_SHARD_VERSION)
        elif match and match.group(1):
            versions.append(OBJECT_STORE_VERSION)
    return max(versions)


def build_manifest(
    layout: StoreLayout,
    plan: ShardPlan,
    identity: dict[str, Any],
    shards: list[ShardInfo],
    *,
    teacher: dict,
    dataset: dict,
    config: dict,
    tokenizer: TokenizerRef | None = None,
    created_by: str = "",
) -> Manifest:
    """The manifest of a dump that wrote `shards` (every planned one, once), at the lowest format
    version that holds its layout and its shards' names."""
    infos = sorted(shards, key=lambda s: s.index)
    if [s.index for s in infos] != list(range(plan.num_shards)):
        raise StoreError(f"the dump wrote shards {[s.index for s in infos]} of {plan.num_shards} planned: run it again")
    return Manifest(
        layout=layout,
        num_samples=sum(s.num_samples for s in infos),
        num_positions=sum(s.num_positions for s in infos),
        teacher=teacher,
        dataset=dataset,
        shards=tuple(infos),
        tokenizer=tokenizer,
        config=config,
        content_sha256=content_sha256(identity),
        created_by=created_by,
        format_version=max(layout.format_version, names_version(infos)),
    )
