"""The manifest: the store's commit marker and its only source of truth about shards."""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from logitstore.errors import ManifestError, StoreError, StoreNotFoundError
from logitstore.identity import content_sha256
from logitstore.layout import StoreLayout, TokenizerRef
from logitstore.planning import ShardPlan
from logitstore.storage import Storage, open_storage, shard_name

FORMAT_NAME = "logitstore"
FORMAT_VERSION = 9  # the newest this code reads and writes; stores are written with the lowest version that holds them
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_SHARD_NAME = re.compile(r"^shards/[0-9]{5,9}(\.[0-9a-f]{12})?\.(zarr|arrow|zarr\.zip)$")
OBJECT_STORE_VERSION = 7  # shard names with an attempt tag: stores written to object storage
ZIP_SHARD_VERSION = 8  # Zarr shards on object storage as one ZIP object each
__all__ = ["Manifest", "ShardInfo", "build_manifest", "parse_manifest", "read_manifest", "shard_name"]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DAMAGED = "the store is damaged; dump it again"
# Bounds on what a manifest may hold, so that no value breaks the code that uses it (numpy's int64,
# a float, Python's recursion): ids are int64; counts and sizes at most 2**62 (their sums stay in
# int64); seeds are taken modulo 2**64, either sign of a 64-bit word; free-form objects nest at most
# MAX_DEPTH levels (manifest.schema.json says the same where a schema can).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_COUNT = 2**62
MAX_VOCAB = 2**32  # uint32 class ids
SEED_RANGE = (INT64_MIN, 2**64 - 1)
MAX_DEPTH = 64
_FREE_FORM = ("teacher", "dataset", "config", "tokenizer", "selection", "codec", "views", "inputs", "temperatures")
# Integers of the layout's objects, by object and key: (lowest, highest) before the layout's own rules
# (layout.py) judge them, so that none is too large for them or for numpy.
_LAYOUT_INTS = {
    "selection": {"draws": (0, MAX_COUNT), "min_k": (0, MAX_COUNT), "seed": SEED_RANGE},
    "codec": {"bits": (0, MAX_COUNT)},
    "views": {"count": (0, MAX_COUNT), "seed": SEED_RANGE},
    "inputs": {"seq_len": (0, MAX_COUNT)},
    "tokenizer": {"vocab_size": (0, MAX_COUNT)},
}
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlong = 40


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


def _count(obj: dict, key: str, where: str = "", *, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
    value = _require(obj, key, int, where)
    if value < minimum or value > maximum:
        raise ManifestError(f"manifest {where}'{key}' = {_short(value)} is out of range: {_DAMAGED}")
    return value


def _int64(obj: dict, key: str, where: str) -> int:
    value = _require(obj, key, int, where)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ManifestError(f"manifest {where}'{key}' = {_short(value)} is not a signed 64-bit id: {_DAMAGED}")
    return value


def _short(value: Any) -> str:
    """A value for a one-line message: at most ~60 characters, whatever it holds."""
    return _SHORT.repr(value)


def _reject_constant(name: str) -> None:
    raise ManifestError(f"manifest holds {name}, which is not a JSON number: {_DAMAGED}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ManifestError(f"manifest number {_short(text)} is too large for a float: {_DAMAGED}")
    return value


def _load_json(text: str | bytes, source: str) -> Any:
    """JSON of a manifest, as one-line ManifestErrors for anything Python's json cannot take."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                f"{source} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): {_DAMAGED}"
            ) from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno}): {_DAMAGED}") from None
    except RecursionError:
        raise ManifestError(f"{source} nests JSON too deeply to parse: {_DAMAGED}") from None
    except ValueError:  # an integer of more digits than Python converts (4300)
        raise ManifestError(f"{source} holds a number too long to read: {_DAMAGED}") from None


def _check_free_form(raw: dict) -> None:
    """The objects a manifest keeps and passes on (teacher, dataset, config...): nested at most
    MAX_DEPTH levels, every string valid Unicode (no lone surrogate), so that printing, hashing or
    writing them again cannot fail. Iterative: a deep object costs no recursion here."""
    for key in _FREE_FORM + ("created_by",):
        if key not in raw:
            continue
        stack = [(raw[key], 1)]
        while stack:
            value, depth = stack.pop()
            if type(value) is str:
                if not value.isascii():
                    _check_unicode(value, key)
                continue
            if type(value) is dict:
                children = [*value.keys(), *value.values()]
            elif type(value) is list:
                children = value
            else:
                continue
            if depth > MAX_DEPTH:
                raise ManifestError(f"manifest '{key}' nests deeper than {MAX_DEPTH} levels: {_DAMAGED}")
            stack.extend((child, depth + 1) for child in children)


def _check_unicode(text: str, key: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"manifest '{key}' holds a string that is not valid Unicode: {_DAMAGED}") from None


def _check_layout_numbers(raw: dict) -> None:
    """Integers too large for what uses them, before the layout is built from them (a float of an
    integer beyond 2**1024 overflows; numpy takes 64 bits)."""
    for name, bounds in _LAYOUT_INTS.items():
        obj = raw.get(name)
        if not isinstance(obj, dict):
            continue
        for key, (low, high) in bounds.items():
            value = obj.get(key)
            if type(value) is int and not low <= value <= high:
                raise ManifestError(
                    f"manifest {name} '{key}' = {_short(value)} is out of range ({low}..{high}): {_DAMAGED}"
                )
    # The dump's configuration is informative, but a trainer packs text as it says (seq_len, train_on).
    config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    seq_len = config.get("seq_len", 2)
    if type(seq_len) is not int or not 2 <= seq_len <= MAX_COUNT:
        raise ManifestError(f"manifest config 'seq_len' = {_short(seq_len)} is not a block length: {_DAMAGED}")
    if not isinstance(config.get("train_on", ""), str):
        raise ManifestError(f"manifest config 'train_on' = {_short(config['train_on'])} is not a string: {_DAMAGED}")
    selection = raw.get("selection") if isinstance(raw.get("selection"), dict) else {}
    temps = raw.get("temperatures") if isinstance(raw.get("temperatures"), list) else []
    for value in (*temps, selection.get("temperature"), selection.get("top_p")):
        if type(value) is int and abs(value) > MAX_COUNT:
            raise ManifestError(f"manifest temperature or top_p {_short(value)} is out of range: {_DAMAGED}")


def _parse_shards(raw: list, backend: str, version: int) -> list[ShardInfo]:
    shards: list[ShardInfo] = []
    last_id = None
    for i, s in enumerate(raw):
        # The common case in one test (a manifest lists up to ~100k shards); any doubt goes the long
        # way, which names the problem.
        try:
            index, name, first, last = s["index"], s["name"], s["first_id"], s["last_id"]
            samples, positions, nbytes, sha = s["num_samples"], s["num_positions"], s["num_bytes"], s["sha256"]
            plain = (
                type(index) is int
                and type(first) is int
                and type(last) is int
                and type(samples) is int
                and type(positions) is int
                and type(nbytes) is int
                and type(name) is str
                and type(sha) is str
                and INT64_MIN <= first <= last <= INT64_MAX
                and 1 <= samples <= MAX_COUNT
                and 0 <= positions <= MAX_COUNT
                and 0 <= nbytes <= MAX_COUNT
            )
        except (KeyError, TypeError):
            plain = False
        if not plain:
            _check_shard_fields(s, i)
        where = f"shard {i} "
        match = _SHARD_NAME.match(name)
        suffix = match.group(2) if match else ""
        if not match or suffix.split(".")[0] != backend or (suffix == "zarr.zip" and not match.group(1)):
            raise ManifestError(f"manifest {where}name {name!r} is not a valid shard name for backend {backend}")
        needs = ZIP_SHARD_VERSION if suffix == "zarr.zip" else OBJECT_STORE_VERSION if match.group(1) else 1
        if version < needs:
            raise ManifestError(f"manifest {where}name {name!r} needs format version {needs}: {_DAMAGED}")
        if index != i or not _HEX64.match(sha) or last < first:
            raise ManifestError(f"manifest {where}has an inconsistent index, id range or checksum: {_DAMAGED}")
        if last_id is not None and first <= last_id:
            raise ManifestError(f"manifest {where}overlaps the id range of shard {i - 1}: {_DAMAGED}")
        last_id = last
        shards.append(ShardInfo(index, name, first, last, samples, positions, nbytes, sha))
    return shards


def _check_shard_fields(s: Any, i: int) -> None:
    """Raise the ManifestError that names what is wrong with shard entry `i`'s fields."""
    where = f"shard {i} "
    if not isinstance(s, dict):
        raise ManifestError(f"manifest {where}is not an object: {_DAMAGED}")
    name = _require(s, "name", str, where)
    if not _SHARD_NAME.match(name):
        raise ManifestError(f"manifest {where}name {_short(name)} is not a valid shard name")
    _count(s, "index", where)
    first, last = _int64(s, "first_id", where), _int64(s, "last_id", where)
    _count(s, "num_samples", where, minimum=1)
    _count(s, "num_positions", where)
    _count(s, "num_bytes", where)
    _require(s, "sha256", str, where)
    if last < first:
        raise ManifestError(f"manifest {where}has an inconsistent index, id range or checksum: {_DAMAGED}")


def _parse_layout(raw: dict, version: int) -> StoreLayout:
    for key in ("backend", "index_dtype", "value_dtype"):
        _require(raw, key, str, "")
    _count(raw, "top_k", minimum=1, maximum=MAX_VOCAB)
    _count(raw, "vocab_size", minimum=1, maximum=MAX_VOCAB)
    _count(raw, "shard_size", minimum=1)
    _require(raw, "temperatures", list, "")
    if raw["value_dtype"] != "float32":
        raise ManifestError(f"manifest value_dtype {_short(raw['value_dtype'])} is unknown (expected float32)")
    _check_layout_numbers(raw)
    layout = StoreLayout.from_json(raw)
    # a committed store's features also name their projection file's checksum
    problems = layout.problems() or (layout.features.problems() if layout.features else [])
    if problems:
        found = "; ".join(problems)
        found = found if len(found) <= 160 else found[:157] + "..."
        raise ManifestError(f"manifest layout is invalid ({found}): upgrade logitstore, or {_DAMAGED}")
    if layout.format_version > version:
        raise ManifestError(
            f"manifest of format version {version} declares what version {layout.format_version} "
            f"introduced (selection {layout.selection.kind}, codec {layout.codec.to_json()}, "
            f"views {layout.views is not None}, inputs {layout.inputs is not None}, features "
            f"{layout.features is not None}): {_DAMAGED}"
        )
    return layout


def parse_manifest(text: str | bytes, source: str = "manifest") -> Manifest:
    """Parse and check a manifest (its text, or its bytes: UTF-8); ManifestError names the first
    problem found, in one line."""
    raw = _load_json(text, source)
    if not isinstance(raw, dict):
        raise ManifestError(f"{source} is not a JSON object: {_DAMAGED}")
    if raw.get("format") != FORMAT_NAME:
        raise ManifestError(f"{source} is not a logitstore manifest (format={_short(raw.get('format'))})")
    version = _require(raw, "format_version", int, "")
    if version > FORMAT_VERSION:
        raise ManifestError(
            f"store format version {_short(version)} is newer than this logitstore reads ({FORMAT_VERSION}): "
            "upgrade logitstore"
        )
    if version < 1:
        raise ManifestError(f"store format version {_short(version)} is invalid: {_DAMAGED}")
    _check_free_form(raw)
    layout = _parse_layout(raw, version)
    shards = _parse_shards(_require(raw, "shards", list, ""), layout.backend, version)
    tokenizer = None
    if raw.get("tokenizer") is not None:
        tokenizer = TokenizerRef.from_json(raw["tokenizer"])
        if not isinstance(raw["tokenizer"], dict) or tokenizer.problems():
            found = "; ".join(tokenizer.problems())
            found = found if len(found) <= 160 else found[:157] + "..."
            raise ManifestError(f"manifest tokenizer is invalid ({found}): {_DAMAGED}")
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
    return parse_manifest(storage.get(MANIFEST_NAME), source=f"{storage}/{MANIFEST_NAME}")


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
    features_sha256: str = "",
) -> Manifest:
    """The manifest of a dump that wrote `shards` (every planned one, once), at the lowest format
    version that holds its layout and its shards' names."""
    infos = sorted(shards, key=lambda s: s.index)
    if [s.index for s in infos] != list(range(plan.num_shards)):
        raise StoreError(f"the dump wrote shards {[s.index for s in infos]} of {plan.num_shards} planned: run it again")
    if layout.features is not None:  # the projection file the shards were written with
        layout = replace(layout, features=replace(layout.features, sha256=features_sha256))
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
