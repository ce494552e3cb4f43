"""Writing a store: prepare the directory, write whole shards atomically, commit with the manifest."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from logitstore.backends import get_backend
from logitstore.checksum import shard_checksum
from logitstore.errors import StoreError, StoreExistsError
from logitstore.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, ShardInfo, shard_name, write_manifest
from logitstore.shard import ShardData

TMP_DIR = ".tmp"


def prepare_store_dir(root: str | os.PathLike, *, overwrite: bool) -> Path:
    """Make `root` ready for a new dump. A complete store there is kept unless `overwrite`."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StoreExistsError(f"{root} is a file: pass a directory path for the store")
    if (root / MANIFEST_NAME).exists():
        if not overwrite:
            raise StoreExistsError(f"a complete store already exists at {root}: pass --overwrite to replace it, or choose another --out")
        # Un-commit first so that a crash in the middle never leaves a manifest over missing shards.
        (root / MANIFEST_NAME).unlink()
    if root.exists() and any(root.iterdir()) and not (root / "shards").exists() and not (root / TMP_DIR).exists():
        raise StoreExistsError(f"{root} is a non-empty directory that is not a store: choose an empty or new --out")
    for sub in ("shards", TMP_DIR):
        if (root / sub).exists():
            shutil.rmtree(root / sub)
    (root / TOKENIZER_NAME).unlink(missing_ok=True)
    try:
        (root / "shards").mkdir(parents=True, exist_ok=True)
        (root / TMP_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the store directory {root}: {exc.strerror}; choose a writable --out") from None
    return root


def write_shard(root: str | os.PathLike, backend_name: str, index: int, data: ShardData, *,
                top_k: int, num_temperatures: int, index_dtype: str, vocab_size: int, draws: int = 0) -> ShardInfo:
    """Validate `data`, write it under a temporary name, then rename it into place.

    The caller owns shard `index` exclusively (one task per shard).
    """
    data.validate(top_k=top_k, num_temperatures=num_temperatures, index_dtype=index_dtype, vocab_size=vocab_size, draws=draws)
    root = Path(root)
    name = shard_name(index, backend_name)
    final = root / name
    tmp = root / TMP_DIR / f"{Path(name).name}.{uuid.uuid4().hex}"
    backend = get_backend(backend_name)
    try:
        backend.write(str(tmp), data)
        sha, nbytes = shard_checksum(tmp)
        if final.exists():  # a retried task: the plan is deterministic, so the new copy replaces the old
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.rename(tmp, final)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
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


def write_tokenizer(root: str | os.PathLike, json_text: str) -> dict:
    """Save the tokenizer the store's token ids come from (before the commit); -> its manifest entry."""
    import hashlib

    data = json_text.encode("utf-8")
    tmp = Path(root) / TMP_DIR / TOKENIZER_NAME
    tmp.write_bytes(data)
    os.replace(tmp, Path(root) / TOKENIZER_NAME)
    return {"file": TOKENIZER_NAME, "sha256": hashlib.sha256(data).hexdigest()}


def commit_store(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Write the manifest last; the store is complete from this moment."""
    root = Path(root)
    shutil.rmtree(root / TMP_DIR, ignore_errors=True)
    return write_manifest(root, manifest)
