"""Writing a store: one StoreWriter owns the store from its exclusive access to its commit, on any
storage (logitstore/storage: a local directory, or a prefix on object storage).

    with StoreWriter(root) as writer:          # the storage's lock or lease: a second writer is refused
        writer.start(layout, plan, identity, overwrite=False)
        if writer.finished: ...                # the same dump is already complete: nothing to do
        shards = writer.shard_writer()         # picklable; each task writes the whole shards it owns
        infos = [shards.write(j, data) for j, data in ...]   # plus writer.resumed, kept from a crashed run
        manifest = writer.commit(infos, teacher=..., dataset=..., config=...)   # the manifest, last

Each shard appears whole or not at all (the storage renames a temporary write into place, or
writes an object of its own and then its marker); the manifest, created last with a create-only
write, is the commit. An unfinished dump keeps `.pending.json` (its identity, see
logitstore.identity): a rerun with the same identity resumes it, keeping every shard that is sound
and planned.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from logitstore.backends import get_backend
from logitstore.checksum import files_checksum
from logitstore.errors import ShardCorruptError, ShardDataError, StoreConflictError, StoreError, StoreExistsError
from logitstore.features import projection_bytes, read_projection
from logitstore.identity import canonical, content_sha256, differences
from logitstore.layout import FEATURE_FILE, TOKENIZER_DIR, TOKENIZER_NAME, Features, StoreLayout, TokenizerRef
from logitstore.manifest import MANIFEST_NAME, Manifest, ShardInfo, build_manifest, read_manifest
from logitstore.planning import ShardPlan
from logitstore.shard import ShardData
from logitstore.storage import Candidate, Guard, ObjectExistsError, Storage, StoreUnreachableError, open_storage
from logitstore.storage.base import LEASE_NAME, LOCK_NAME, TMP_DIR
from logitstore.version import __version__

PENDING_NAME = ".pending.json"  # the identity of an unfinished dump; a rerun with the same one resumes
# What a store (complete or not) holds at its top: anything else is not ours, and never deleted.
STORE_NAMES = frozenset({"shards", TMP_DIR, PENDING_NAME, MANIFEST_NAME})


def check_destination(location: str | os.PathLike | Storage) -> Storage:
    """The storage at `location`, refused (StoreExistsError) when it holds files that are not a
    store: a writer never deletes what it did not make."""
    storage = location if isinstance(location, Storage) else open_storage(location)
    names = storage.top_level() - {LOCK_NAME, LEASE_NAME}
    if names and not names & STORE_NAMES:
        raise StoreExistsError(f"{storage} holds files that are not a store", remedy="elsewhere")
    return storage


def shard_info(index: int, name: str, data: ShardData, num_bytes: int, sha256: str) -> ShardInfo:
    return ShardInfo(
        index=index,
        name=name,
        first_id=int(data.sample_id[0]),
        last_id=int(data.sample_id[-1]),
        num_samples=data.num_samples,
        num_positions=data.num_positions,
        num_bytes=num_bytes,
        sha256=sha256,
    )


@dataclass(frozen=True)
class ShardWriter:
    """Writes and checks whole shards of one store. Picklable: each writing task holds a copy, and
    owns the shards it writes (exactly one task per shard; Zarr loses data when two share one)."""

    storage: Storage
    layout: StoreLayout
    guard: Guard | None = None  # checked before each write: the writer still owns the store

    def write(self, index: int, data: ShardData) -> ShardInfo:
        """Validate `data` (top-k by descending logit), encode it with the layout's codec and write it."""
        data.validate(self.layout, reading=False)
        backend = get_backend(self.layout.backend)
        arrays = self.layout.codec.encode(data)

        def files(one_object: bool) -> dict[str, bytes]:
            return {"": backend.encode_object(arrays)} if one_object else backend.encode(arrays)

        def describe(name: str, sha256: str, num_bytes: int) -> ShardInfo:
            return shard_info(index, name, data, num_bytes, sha256)

        return self.storage.write_shard(index, self.layout.backend, files, describe, self.guard)

    def sound(self, index: int, plan: ShardPlan, candidates: list[Candidate]) -> ShardInfo | None:
        """The first of shard `index`'s writes that matches its marker (when it has one), decodes,
        passes the shard rules and holds exactly the ids the plan gives it; None when none does."""
        planned = (int(plan.counts[index]), int(plan.first_ids[index]), int(plan.last_ids[index]))
        for candidate in candidates:
            try:
                files = self.storage.shard_files(candidate.name)
                sha256, num_bytes = files_checksum(files)
                marker = candidate.marker
                if marker is not None and (marker.get("sha256"), marker.get("num_bytes")) != (sha256, num_bytes):
                    raise ShardCorruptError("bytes differ from the marker")
                backend = get_backend(self.layout.backend)
                data = self.layout.codec.decode(backend.decode(files), self.layout.top_k)
                data.validate(self.layout)
                if (data.num_samples, int(data.sample_id[0]), int(data.sample_id[-1])) != planned:
                    raise ShardDataError("ids differ from the plan")
            except StoreUnreachableError:
                raise
            except Exception:  # any damage at all: this write must be made again
                continue
            return shard_info(index, candidate.name, data, num_bytes, sha256)
        return None


class StoreWriter:
    """The single writer of a store, from its exclusive access to its commit (see the module docstring)."""

    def __init__(self, location: str | os.PathLike | Storage, lease_seconds: float | None = None) -> None:
        self.storage = location if isinstance(location, Storage) else open_storage(location)
        self.root = self.storage.uri
        self._exclusive = self.storage.exclusive(lease_seconds)
        self.layout: StoreLayout | None = None
        self.plan: ShardPlan | None = None
        self.identity: dict[str, Any] = {}
        self.finished: Manifest | None = None  # set by start(): the same dump, already complete
        self.resumed: dict[int, ShardInfo] = {}  # set by start(): sound shards kept from an unfinished run

    def __enter__(self) -> StoreWriter:
        check_destination(self.storage)  # before anything is created there
        self._exclusive.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._exclusive.__exit__(*exc)

    def start(self, layout: StoreLayout, plan: ShardPlan, identity: dict[str, Any], *, overwrite: bool) -> None:
        """Prepare the store for the dump `identity` describes (teacher, dataset, arguments; the
        layout is added here). The same dump already complete sets `finished`; an unfinished one
        with the same identity is resumed (`resumed`); one with another identity is refused unless
        `overwrite`; anything else starts from scratch."""
        problems = layout.problems()
        if problems:
            raise StoreError(
                f"invalid store layout ({'; '.join(problems)}): fix the arguments the layout was made from"
            )
        self.layout, self.plan = layout, plan
        self.identity = canonical({"layout": layout.to_json(), **identity})
        if self.storage.size(MANIFEST_NAME) is not None and not overwrite:
            self.finished = self._same_complete_store()
            return
        if not overwrite and self._resumable():
            self.resumed = self._sound_shards()
            return
        self._exclusive.check()
        self.storage.delete(MANIFEST_NAME)  # un-commit first: never a manifest over missing shards
        for tree in ("shards", TMP_DIR, TOKENIZER_DIR):
            self.storage.delete_tree(tree)
        self.storage.delete_many([TOKENIZER_NAME, PENDING_NAME])
        self.storage.put(PENDING_NAME, (json.dumps(self.identity, indent=2, sort_keys=True) + "\n").encode())

    def recorded(self) -> tuple[dict, dict] | None:
        """(config, layout) of the dump this store holds (its manifest) or began (its pending
        record), as recorded, or None: a rerun that may keep the plan it started with asks here."""
        if self.storage.size(MANIFEST_NAME) is not None:
            try:
                manifest = read_manifest(self.storage)
            except StoreError:
                return None
            return dict(manifest.config or {}), manifest.layout.to_json()
        try:
            previous = json.loads(self.storage.get(PENDING_NAME))
        except (ValueError, FileNotFoundError):
            return None
        if not isinstance(previous, dict) or not isinstance(previous.get("layout"), dict):
            return None
        return dict(previous.get("config") or {}), previous["layout"]

    def _same_complete_store(self) -> Manifest:
        existing = read_manifest(self.storage)
        if existing.content_sha256 == content_sha256(self.identity):
            return existing
        recorded = {"teacher": existing.teacher, "dataset": existing.dataset, "layout": existing.layout.to_json()}
        differ = differences(recorded, {k: self.identity.get(k) for k in recorded})
        raise StoreExistsError(
            f"a complete store made from other teacher weights, data or arguments ({', '.join(differ) or 'arguments'} "
            f"differ) already exists at {self.root}",
            remedy="overwrite",
        )

    def _resumable(self) -> bool:
        try:
            previous = json.loads(self.storage.get(PENDING_NAME))
        except (ValueError, FileNotFoundError):
            return False  # none, or a damaged record: start over
        if previous == self.identity:
            return True
        differ = differences(previous, self.identity) if isinstance(previous, dict) else ["everything"]
        raise StoreConflictError(
            f"{self.root} holds an unfinished dump made with other arguments (they differ in: {', '.join(differ)})",
            remedy="resume",
        )

    def _sound_shards(self) -> dict[int, ShardInfo]:
        """Each planned shard's first sound write; every other write is deleted."""
        candidates = self.storage.shard_candidates(self.plan.num_shards, self.layout.backend)
        writer = self.shard_writer()
        kept = {j: info for j, found in candidates.items() if (info := writer.sound(j, self.plan, found)) is not None}
        self._exclusive.check()
        self.storage.discard_shards({info.name for info in kept.values()})
        return kept

    def shard_writer(self) -> ShardWriter:
        return ShardWriter(self.storage, self._started(), self._exclusive.guard())

    def save_tokenizer(self, json_text: str, kind: str, vocab_size: int) -> TokenizerRef:
        """Save the tokenizer the store's token ids come from (before the commit)."""
        data = json_text.encode("utf-8")
        self._exclusive.check()
        self.storage.put(TOKENIZER_NAME, data)
        return TokenizerRef(
            kind=kind, vocab_size=vocab_size, file=TOKENIZER_NAME, sha256=hashlib.sha256(data).hexdigest()
        )

    def save_tokenizer_files(
        self, files: dict[str, bytes], vocab_size: int, chat_template_sha256: str | None
    ) -> TokenizerRef:
        """Save a Hugging Face tokenizer's files under tokenizer/ (before the commit)."""
        self._exclusive.check()
        self.storage.delete_tree(TOKENIZER_DIR)  # what an interrupted dump left; rewritten whole
        self.storage.put_many({f"{TOKENIZER_DIR}/{name}": data for name, data in files.items()})
        return TokenizerRef(
            kind="hf",
            vocab_size=vocab_size,
            files={name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            chat_template_sha256=chat_template_sha256,
        )

    def save_projection(self, matrices: list[np.ndarray]) -> str:
        """Save the features' projection file (before the commit) -> its sha256."""
        data = projection_bytes(matrices)
        self._exclusive.check()
        self.storage.put(FEATURE_FILE, data)
        return hashlib.sha256(data).hexdigest()

    def saved_projection(self, features: Features) -> list[np.ndarray] | None:
        """The projection an unfinished dump saved (its resumed shards were written with it), or None."""
        try:
            data = self.storage.get(FEATURE_FILE)
        except FileNotFoundError:
            return None
        return read_projection(data, features.widths, features.dim)

    def commit(
        self,
        shards: list[ShardInfo],
        *,
        teacher: dict,
        dataset: dict,
        config: dict,
        tokenizer: TokenizerRef | None = None,
        features_sha256: str = "",
    ) -> Manifest:
        """Build the manifest from the layout and every planned shard, and create it last, under an
        exclusive access just confirmed: the store is complete from this moment."""
        manifest = build_manifest(
            self._started(), self.plan, self.identity, shards, teacher=teacher, dataset=dataset, config=config,
            tokenizer=tokenizer, created_by=f"logitstore {__version__}", features_sha256=features_sha256,
        )  # fmt: skip
        self._exclusive.confirm()
        try:
            self.storage.create(MANIFEST_NAME, manifest.to_json().encode("utf-8"))
        except ObjectExistsError:
            raise StoreError(
                f"{self.root} was committed by another writer while this one held it: the store is theirs",
                remedy="overwrite",
            ) from None
        except OSError as exc:
            raise StoreError(
                f"cannot write the manifest of {self.root} ({exc.strerror}): fix that, then rerun the same command; "
                "every shard is kept and the store stays incomplete until then"
            ) from None
        self.storage.delete(PENDING_NAME)
        self.storage.discard_shards({s.name for s in manifest.shards})  # retried or duplicated writes, partial ones
        return manifest

    def _started(self) -> StoreLayout:
        if self.layout is None:
            raise RuntimeError("StoreWriter.start() must come first")
        return self.layout


def open_writer(out: str | os.PathLike | Storage, lease_seconds: float | None = None) -> StoreWriter:
    """The writer of the store at `out` (a local path, file://, or an object-storage URI)."""
    return StoreWriter(out, lease_seconds)
