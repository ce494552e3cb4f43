"""Writing and reading a store on object storage (FORMAT.md, "Stores on object storage").

Object stores have no rename and no flock, so the local protocol (temporary name, rename, manifest
last, flock) is rebuilt on what they offer, immutable objects and conditional writes:

- every write of a shard is one object under a name of its own, `shards/00012.<attempt>.arrow` or
  `.zarr.zip` (a Zarr group zipped: one request to read, not ~16), and ends with a marker
  `shards/00012.<attempt>.done` (its ShardInfo), written after it: an attempt without a marker is a
  leftover, never read (version-7 stores also hold Zarr groups as many objects under a prefix);
- the manifest names exactly one attempt per shard and is published with a create-only write: the
  commit. A retried or duplicated task leaves a second attempt that no manifest names, so no
  sample is ever visible twice; the commit (and a resume) deletes such leftovers;
- the single writer holds a lease (logitstore/lease.py) instead of a flock.

The same interface as logitstore.writer.StoreWriter and ShardWriter, which keep the local protocol.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from logitstore.backends import get_backend
from logitstore.checksum import files_checksum
from logitstore.errors import (
    ManifestError,
    ShardCorruptError,
    ShardDataError,
    StoreConflictError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
)
from logitstore.identity import canonical, content_sha256, differences
from logitstore.layout import TOKENIZER_DIR, TOKENIZER_NAME, StoreLayout, TokenizerRef
from logitstore.lease import LEASE_NAME, StoreLease
from logitstore.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    OBJECT_STORE_VERSION,
    ZIP_SHARD_VERSION,
    Manifest,
    ShardInfo,
    parse_manifest,
    shard_name,
)
from logitstore.objects import ObjectLocation, ObjectPreconditionError, StoreUnreachableError
from logitstore.planning import ShardPlan
from logitstore.shard import ShardData

PENDING_NAME = ".pending.json"
_ATTEMPT = re.compile(r"^shards/([0-9]{5,9})\.([0-9a-f]{12})\.(zarr\.zip|zarr|arrow|done)(/.*)?$")
_STORE_NAMES = (MANIFEST_NAME, PENDING_NAME, LEASE_NAME)


def read_manifest_at(location: ObjectLocation) -> Manifest:
    """The manifest of a complete store on object storage; StoreNotFoundError when there is none."""
    try:
        head = location.head(MANIFEST_NAME)
        if head is not None and head.size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{location.uri}/{MANIFEST_NAME} is {head.size} bytes: the store is damaged")
        text = location.get(MANIFEST_NAME).decode("utf-8")
    except FileNotFoundError:
        other = location.list(None)
        raise StoreNotFoundError(
            f"{location.uri} holds no complete store (no {MANIFEST_NAME}; the dump did not finish): run the dump again"
            if other
            else f"no store at {location.uri}: check the URI, or create one with `python -m jobs.dump_logits`"
        ) from None
    return parse_manifest(text, source=f"{location.uri}/{MANIFEST_NAME}")


def shard_files(location: ObjectLocation, name: str) -> dict[str, bytes]:
    """The files of shard `name` ({"": bytes} for a one-object shard; a version-7 Zarr group is a
    prefix of objects); FileNotFoundError if it is missing."""
    if name.endswith((".arrow", ".zip")):
        return {"": location.get(name)}
    names = sorted(location.list(name + "/"))
    if not names:
        raise FileNotFoundError(f"{location.uri}/{name}")
    data = location.get_many(names)
    return {path[len(name) + 1 :]: data[path] for path in names}


@dataclass(frozen=True)
class RemoteShardWriter:
    """Writes whole shards of one store on object storage, each under a name of its own. Picklable."""

    root: str
    layout: StoreLayout

    def write(self, index: int, data: ShardData) -> ShardInfo:
        data.validate(self.layout, reading=False)
        location = ObjectLocation(self.root)
        name = shard_name(index, self.layout.backend, uuid.uuid4().hex[:12])
        blob = get_backend(self.layout.backend).encode_object(self.layout.codec.encode(data))
        sha, nbytes = files_checksum({"": blob})
        location.put(name, blob)
        info = _info(index, name, data, nbytes, sha)
        location.put(_marker(name), json.dumps(info.to_json()).encode())  # last: the attempt is whole
        return info

    def sound(self, index: int, plan: ShardPlan, attempts: dict[str, ShardInfo]) -> ShardInfo | None:
        """The first of shard `index`'s marked attempts that decodes, passes the shard rules, holds
        exactly the ids the plan gives it and matches its marker; None when none does."""
        location = ObjectLocation(self.root)
        planned = (int(plan.counts[index]), int(plan.first_ids[index]), int(plan.last_ids[index]))
        for name, info in sorted(attempts.items()):
            try:
                files = shard_files(location, name)
                if files_checksum(files) != (info.sha256, info.num_bytes):
                    raise ShardCorruptError("bytes differ from the marker")
                data = self.layout.codec.decode(get_backend(self.layout.backend).decode(files), self.layout.top_k)
                data.validate(self.layout)
                if (data.num_samples, int(data.sample_id[0]), int(data.sample_id[-1])) != planned:
                    raise ShardDataError("ids differ from the plan")
            except StoreUnreachableError:
                raise
            except Exception:  # any damage at all: this attempt is a leftover
                continue
            return _info(index, name, data, info.num_bytes, info.sha256)
        return None


def _marker(name: str) -> str:
    m = _ATTEMPT.match(name)
    return f"shards/{m.group(1)}.{m.group(2)}.done"


def _attempt(name: str) -> tuple[str, str] | None:
    """(index digits, attempt tag) of any object of a shard attempt, marker included."""
    m = _ATTEMPT.match(name)
    return (m.group(1), m.group(2)) if m else None


def _info(index: int, name: str, data: ShardData, nbytes: int, sha: str) -> ShardInfo:
    return ShardInfo(
        index=index,
        name=name,
        first_id=int(data.sample_id[0]),
        last_id=int(data.sample_id[-1]),
        num_samples=data.num_samples,
        num_positions=data.num_positions,
        num_bytes=nbytes,
        sha256=sha,
    )


class RemoteStoreWriter:
    """The single writer of a store on object storage, from its lease to its commit."""

    def __init__(self, root: str, lease_seconds: float | None = None) -> None:
        self.root = root.rstrip("/")
        self.location = ObjectLocation(self.root)
        self._lease = StoreLease(self.location, lease_seconds)
        self.layout: StoreLayout | None = None
        self.plan: ShardPlan | None = None
        self.identity: dict[str, Any] = {}
        self.finished: Manifest | None = None
        self.resumed: dict[int, ShardInfo] = {}

    def __enter__(self) -> RemoteStoreWriter:
        self._check_destination()
        self._lease.acquire()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._lease.release()
        except StoreError:
            pass  # the server is gone: the lease expires by itself

    def _check_destination(self) -> None:
        names = self.location.list(None)
        if names and not any(n in names for n in _STORE_NAMES) and not any(_ATTEMPT.match(n) for n in names):
            raise StoreExistsError(
                f"{self.root} holds objects that are not a store: choose an empty or new --out prefix"
            )

    def start(self, layout: StoreLayout, plan: ShardPlan, identity: dict[str, Any], *, overwrite: bool) -> None:
        """As StoreWriter.start: `finished` for the same complete dump, `resumed` for an unfinished
        one with the same identity, refused for another one unless `overwrite`, else a fresh store."""
        problems = layout.problems()
        if problems:
            raise StoreError(
                f"invalid store layout ({'; '.join(problems)}): fix the arguments the layout was made from"
            )
        self.layout, self.plan = layout, plan
        self.identity = canonical({"layout": layout.to_json(), **identity})
        names = self.location.list(None)
        if MANIFEST_NAME in names and not overwrite:
            self.finished = self._same_complete_store()
            return
        if not overwrite and MANIFEST_NAME not in names and self._resumable(names):
            self.resumed = self._sound_attempts(names)
            return
        # A fresh store: un-commit first (never a manifest over missing shards), then clear.
        self.location.delete(MANIFEST_NAME)
        self.location.delete_many([n for n in names if n not in (MANIFEST_NAME, LEASE_NAME)])
        self.location.put(PENDING_NAME, (json.dumps(self.identity, indent=2, sort_keys=True) + "\n").encode())

    def _same_complete_store(self) -> Manifest:
        existing = read_manifest_at(self.location)
        if existing.content_sha256 == content_sha256(self.identity):
            return existing
        recorded = {"teacher": existing.teacher, "dataset": existing.dataset, "layout": existing.layout.to_json()}
        differ = differences(recorded, {k: self.identity.get(k) for k in recorded})
        raise StoreExistsError(
            f"a complete store made from other teacher weights, data or arguments "
            f"({', '.join(differ) or 'arguments'} differ) already exists at {self.root}: "
            f"pass --overwrite to replace it, or choose another --out"
        )

    def _resumable(self, names: dict[str, int]) -> bool:
        if PENDING_NAME not in names:
            return False
        try:
            previous = json.loads(self.location.get(PENDING_NAME))
        except (ValueError, FileNotFoundError):
            return False
        if previous == self.identity:
            return True
        differ = differences(previous, self.identity) if isinstance(previous, dict) else ["everything"]
        raise StoreConflictError(
            f"{self.root} holds an unfinished dump made with other arguments (they differ in: "
            f"{', '.join(differ)}): rerun that dump's command to resume it, or pass --overwrite to start over"
        )

    def _sound_attempts(self, names: dict[str, int]) -> dict[int, ShardInfo]:
        """Each planned shard's first sound marked attempt; every other attempt is deleted."""
        markers: dict[int, dict[str, ShardInfo]] = {}
        for name in names:
            m = _ATTEMPT.match(name)
            if m and m.group(3) == "done" and int(m.group(1)) < self.plan.num_shards:
                try:
                    info = ShardInfo(**json.loads(self.location.get(name)))
                except (ValueError, TypeError, FileNotFoundError):
                    continue
                markers.setdefault(int(m.group(1)), {})[info.name] = info
        writer = self.shard_writer()
        kept = {j: info for j, attempts in markers.items() if (info := writer.sound(j, self.plan, attempts))}
        self._delete_attempts(names, keep={info.name for info in kept.values()})
        return kept

    def _delete_attempts(self, names: dict[str, int] | None, keep: set[str]) -> None:
        """Delete every shard attempt not in `keep` (marker first: an attempt stops counting at once)."""
        names = self.location.list("shards/") if names is None else names
        kept = {_attempt(name) for name in keep}
        doomed = [name for name in names if _attempt(name) is not None and _attempt(name) not in kept]
        self.location.delete_many([n for n in doomed if n.endswith(".done")])
        self.location.delete_many([n for n in doomed if not n.endswith(".done")])

    def shard_writer(self) -> RemoteShardWriter:
        if self.layout is None:
            raise RuntimeError("RemoteStoreWriter.start() must come first")
        return RemoteShardWriter(self.root, self.layout)

    def save_tokenizer(self, json_text: str, kind: str, vocab_size: int) -> TokenizerRef:
        import hashlib

        data = json_text.encode("utf-8")
        self.location.put(TOKENIZER_NAME, data)
        return TokenizerRef(
            kind=kind, vocab_size=vocab_size, file=TOKENIZER_NAME, sha256=hashlib.sha256(data).hexdigest()
        )

    def save_tokenizer_files(
        self, files: dict[str, bytes], vocab_size: int, chat_template_sha256: str | None
    ) -> TokenizerRef:
        import hashlib

        self.location.put_many({f"{TOKENIZER_DIR}/{name}": data for name, data in files.items()})
        return TokenizerRef(
            kind="hf",
            vocab_size=vocab_size,
            files={name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            chat_template_sha256=chat_template_sha256,
        )

    def commit(
        self,
        shards: list[ShardInfo],
        *,
        teacher: dict,
        dataset: dict,
        config: dict,
        tokenizer: TokenizerRef | None = None,
    ) -> Manifest:
        """Publish the manifest with a create-only write, under a lease just renewed: the commit."""
        from logitstore.writer import build_manifest

        manifest = build_manifest(
            self.layout, self.plan, self.identity, shards, teacher=teacher, dataset=dataset, config=config,
            tokenizer=tokenizer, format_version=_object_store_version(self.layout, shards),
        )  # fmt: skip
        self._lease.check()
        try:
            self.location.create(MANIFEST_NAME, manifest.to_json().encode("utf-8"))
        except ObjectPreconditionError:
            # A lost response to our own create looks the same as another writer's: compare first.
            if self.location.get(MANIFEST_NAME) != manifest.to_json().encode("utf-8"):
                raise StoreError(
                    f"{self.root} was committed by another writer while this dump held its lease: the store is "
                    "theirs; rerun with --overwrite to replace it"
                ) from None
        self.location.delete(PENDING_NAME)
        self._delete_attempts(None, keep={s.name for s in manifest.shards})  # retried or duplicated writes
        return manifest


def _object_store_version(layout: StoreLayout, shards: list[ShardInfo]) -> int:
    """The lowest version that holds a store on object storage: 7, 8 once a shard is a ZIP (a
    resumed version-7 dump may keep Zarr groups written as prefixes)."""
    zipped = any(s.name.endswith(".zip") for s in shards)
    return max(layout.format_version, ZIP_SHARD_VERSION if zipped else OBJECT_STORE_VERSION)
