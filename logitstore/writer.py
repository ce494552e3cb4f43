"""Writing a store: one StoreWriter owns the store from its lock to its commit.

    with StoreWriter(root) as writer:          # the store's lock: a second writer is refused at once
        writer.start(layout, plan, identity, overwrite=False)
        if writer.finished: ...                # the same dump is already complete: nothing to do
        shards = writer.shard_writer()         # picklable; each task writes the whole shards it owns
        infos = [shards.write(j, data) for j, data in ...]   # plus writer.resumed, kept from a crashed run
        manifest = writer.commit(infos, teacher=..., dataset=..., config=...)   # the manifest, last

A shard is written under a temporary name and renamed into place; the manifest, written last, is
the commit. An unfinished dump keeps `.pending.json` (its identity, see logitstore.identity): a
rerun with the same identity resumes it, keeping every shard that is sound and planned.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import logitstore
from logitstore.atomic import atomic_write_bytes, atomic_write_text
from logitstore.backends import get_backend
from logitstore.checksum import shard_checksum
from logitstore.errors import ShardDataError, StoreConflictError, StoreError, StoreExistsError
from logitstore.identity import canonical, content_sha256, differences
from logitstore.layout import TOKENIZER_DIR, TOKENIZER_NAME, StoreLayout, TokenizerRef
from logitstore.lock import LOCK_NAME, StoreLock
from logitstore.manifest import MANIFEST_NAME, Manifest, ShardInfo, read_manifest, shard_name, write_manifest
from logitstore.planning import ShardPlan
from logitstore.shard import ShardData

TMP_DIR = ".tmp"
PENDING_NAME = ".pending.json"  # the identity of an unfinished dump; a rerun with the same one resumes


def is_store_dir(root: Path) -> bool:
    """A directory this package made (complete or not): anything else is never deleted."""
    return root.is_dir() and any((root / name).exists() for name in ("shards", TMP_DIR, PENDING_NAME, MANIFEST_NAME))


def check_destination(root: str | os.PathLike) -> None:
    """Refuse a file, or a non-empty directory that is not a store, before anything is created there."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StoreExistsError(f"{root} is a file: pass a directory path for the store")
    if root.is_dir() and any(p.name != LOCK_NAME for p in root.iterdir()) and not is_store_dir(root):
        raise StoreExistsError(f"{root} is a non-empty directory that is not a store: choose an empty or new --out")


@dataclass(frozen=True)
class ShardWriter:
    """Writes and checks whole shards of one store. Picklable: each writing task holds a copy, and
    owns the shards it writes (exactly one task per shard; Zarr loses data when two share one)."""

    root: str
    layout: StoreLayout

    def write(self, index: int, data: ShardData) -> ShardInfo:
        """Validate `data` (top-k by descending logit), encode it with the layout's codec, write it
        under a temporary name, then rename it into place."""
        data.validate(self.layout, reading=False)
        name = shard_name(index, self.layout.backend)
        final = Path(self.root) / name
        tmp = Path(self.root) / TMP_DIR / f"{Path(name).name}.{uuid.uuid4().hex}"
        try:
            get_backend(self.layout.backend).write(str(tmp), self.layout.codec.encode(data))
            sha, nbytes = shard_checksum(tmp)
            _remove(final)  # a retried task: the plan is deterministic, so the new copy replaces the old
            os.rename(tmp, final)
        except BaseException as exc:
            _remove(tmp)
            if _is_out_of_space(exc):
                raise StoreError(
                    f"no space left to write shard {name} of {self.root}: free space, then rerun the same "
                    f"command to resume (finished shards are kept)"
                ) from None
            if isinstance(exc, PermissionError):
                raise StoreError(
                    f"no permission to write shard {name} of {self.root}: make the store directory "
                    f"writable, then rerun the same command"
                ) from None
            raise
        return _info(index, name, data, nbytes, sha)

    def sound(self, index: int, plan: ShardPlan) -> ShardInfo | None:
        """Shard `index` if it is in place, decodes, passes the shard rules and holds exactly the ids
        the plan gives it; else None, and whatever was there is deleted (it must be written again)."""
        name = shard_name(index, self.layout.backend)
        path = Path(self.root) / name
        if not path.exists():
            return None
        try:
            data = self.layout.codec.decode(get_backend(self.layout.backend).read(str(path)), self.layout.top_k)
            data.validate(self.layout)
            planned = (int(plan.counts[index]), int(plan.first_ids[index]), int(plan.last_ids[index]))
            if (data.num_samples, int(data.sample_id[0]), int(data.sample_id[-1])) != planned:
                raise ShardDataError("ids differ from the plan")
            sha, nbytes = shard_checksum(path)
        except Exception:  # any damage at all: write it again
            _remove(path)
            return None
        return _info(index, name, data, nbytes, sha)


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


class StoreWriter:
    """The single writer of a store, from its lock to its commit (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._lock = StoreLock(self.root)
        self._created = False
        self.layout: StoreLayout | None = None
        self.plan: ShardPlan | None = None
        self.identity: dict[str, Any] = {}
        self.finished: Manifest | None = None  # set by start(): the same dump, already complete
        self.resumed: dict[int, ShardInfo] = {}  # set by start(): sound shards kept from an unfinished run

    def __enter__(self) -> StoreWriter:
        check_destination(self.root)  # before the lock file is created in someone's directory
        self._created = not self.root.exists()
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
        # A dump refused before it wrote anything leaves no directory behind.
        if self._created and self.root.is_dir() and [p.name for p in self.root.iterdir()] == [LOCK_NAME]:
            (self.root / LOCK_NAME).unlink(missing_ok=True)
            self.root.rmdir()

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
        if (self.root / MANIFEST_NAME).exists() and not overwrite:
            self.finished = self._same_complete_store()
            return
        if self._resumable(overwrite):
            shutil.rmtree(self.root / TMP_DIR, ignore_errors=True)  # partial writes of the crashed run
            (self.root / TMP_DIR).mkdir()
            writer = self.shard_writer()
            self.resumed = {j: info for j in range(plan.num_shards) if (info := writer.sound(j, plan)) is not None}
            return
        self._prepare_empty()
        atomic_write_text(self.root / PENDING_NAME, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")

    def _same_complete_store(self) -> Manifest:
        existing = read_manifest(self.root)
        if existing.content_sha256 == content_sha256(self.identity):
            return existing
        recorded = {"teacher": existing.teacher, "dataset": existing.dataset, "layout": existing.layout.to_json()}
        differ = differences(recorded, {k: self.identity.get(k) for k in recorded})
        raise StoreExistsError(
            f"a complete store made from other teacher weights, data or arguments "
            f"({', '.join(differ) or 'arguments'} differ) already exists at {self.root}: "
            f"pass --overwrite to replace it, or choose another --out"
        )

    def _resumable(self, overwrite: bool) -> bool:
        pending = self.root / PENDING_NAME
        if overwrite or (self.root / MANIFEST_NAME).exists() or not pending.is_file():
            return False
        try:
            previous = json.loads(pending.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return False  # a damaged record: start over
        if previous == self.identity:
            return True
        differ = differences(previous, self.identity) if isinstance(previous, dict) else ["everything"]
        raise StoreConflictError(
            f"{self.root} holds an unfinished dump made with other arguments (they differ in: "
            f"{', '.join(differ)}): rerun that dump's command to resume it, or pass --overwrite "
            f"to start over"
        )

    def _prepare_empty(self) -> None:
        """An empty store directory; a complete store there is un-committed before anything else."""
        check_destination(self.root)
        (self.root / MANIFEST_NAME).unlink(missing_ok=True)  # never a manifest over missing shards
        for sub in ("shards", TMP_DIR, TOKENIZER_DIR):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        for name in (TOKENIZER_NAME, PENDING_NAME):
            (self.root / name).unlink(missing_ok=True)
        try:
            (self.root / "shards").mkdir(parents=True)
            (self.root / TMP_DIR).mkdir()
        except OSError as exc:
            raise StoreError(
                f"cannot create the store directory {self.root}: {exc.strerror}; choose a writable --out"
            ) from None

    def shard_writer(self) -> ShardWriter:
        return ShardWriter(str(self.root), self._started())

    def save_tokenizer(self, json_text: str, kind: str, vocab_size: int) -> TokenizerRef:
        """Save the tokenizer the store's token ids come from (before the commit)."""
        import hashlib

        data = json_text.encode("utf-8")
        atomic_write_bytes(self.root / TOKENIZER_NAME, data)
        return TokenizerRef(
            kind=kind, vocab_size=vocab_size, file=TOKENIZER_NAME, sha256=hashlib.sha256(data).hexdigest()
        )

    def save_tokenizer_files(
        self, files: dict[str, bytes], vocab_size: int, chat_template_sha256: str | None
    ) -> TokenizerRef:
        """Save a Hugging Face tokenizer's files under tokenizer/ (before the commit)."""
        import hashlib

        directory = self.root / TOKENIZER_DIR
        shutil.rmtree(directory, ignore_errors=True)  # what an interrupted dump left; rewritten whole
        directory.mkdir()
        for name, data in files.items():
            atomic_write_bytes(directory / name, data)
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
        """Build the manifest from the layout and every planned shard, and write it last: the store
        is complete from this moment."""
        manifest = build_manifest(
            self._started(), self.plan, self.identity, shards, teacher=teacher, dataset=dataset, config=config,
            tokenizer=tokenizer,
        )  # fmt: skip
        shutil.rmtree(self.root / TMP_DIR, ignore_errors=True)
        try:
            write_manifest(self.root, manifest)
        except OSError as exc:
            raise StoreError(
                f"cannot write the manifest of {self.root} ({exc.strerror}): fix that, then rerun the same "
                f"command; every shard is kept and the store stays incomplete until then"
            ) from None
        (self.root / PENDING_NAME).unlink(missing_ok=True)
        return manifest

    def _started(self) -> StoreLayout:
        if self.layout is None:
            raise RuntimeError("StoreWriter.start() must come first")
        return self.layout


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
    format_version: int = 0,
) -> Manifest:
    """The manifest of a dump that wrote `shards` (every planned one, once)."""
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
        created_by=f"logitstore {logitstore.__version__}",
        format_version=format_version,
    )


def open_writer(out: str | os.PathLike, lease_seconds: float | None = None):
    """The writer for a store at `out`: StoreWriter for a local path (or file://), RemoteStoreWriter
    for object storage (s3://, gs://, az://)."""
    from logitstore.objects import is_object_uri, local_path

    if is_object_uri(out):
        from logitstore.remote import RemoteStoreWriter

        return RemoteStoreWriter(str(out), lease_seconds)
    return StoreWriter(local_path(out).resolve())  # absolute: the writing actors' working directory is not ours


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_out_of_space(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT / EFBIG anywhere in the chain (zarr and pyarrow wrap OSError in their own errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if "No space left on device" in str(exc) or "File too large" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
