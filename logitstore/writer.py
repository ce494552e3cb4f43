"""Writing a store: prepare the directory, write whole shards atomically, commit with the manifest."""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path

from logitstore.backends import get_backend
from logitstore.checksum import shard_checksum
from logitstore.codec import Codec
from logitstore.errors import ShardDataError, StoreConflictError, StoreError, StoreExistsError
from logitstore.lock import LOCK_NAME
from logitstore.planning import ShardPlan
from logitstore.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, ShardInfo, shard_name, write_manifest
from logitstore.shard import ShardData

TMP_DIR = ".tmp"


PENDING_NAME = ".pending.json"  # what an unfinished dump is making; a rerun with the same content resumes
OWN_NAMES = ("shards", TMP_DIR, PENDING_NAME, LOCK_NAME, TOKENIZER_NAME, MANIFEST_NAME)


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


def _wipe(root: Path) -> None:
    (root / MANIFEST_NAME).unlink(missing_ok=True)  # un-commit first: never a manifest over missing shards
    for sub in ("shards", TMP_DIR):
        if (root / sub).exists():
            shutil.rmtree(root / sub)
    (root / TOKENIZER_NAME).unlink(missing_ok=True)
    (root / PENDING_NAME).unlink(missing_ok=True)


def prepare_store_dir(root: str | os.PathLike, *, overwrite: bool) -> Path:
    """Make `root` ready for a new dump from scratch. A complete store there is kept unless `overwrite`."""
    root = Path(root)
    check_destination(root)
    if (root / MANIFEST_NAME).exists() and not overwrite:
        raise StoreExistsError(f"a complete store already exists at {root}: pass --overwrite to replace it, or choose another --out")
    if root.exists():
        _wipe(root)
    try:
        (root / "shards").mkdir(parents=True, exist_ok=True)
        (root / TMP_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the store directory {root}: {exc.strerror}; choose a writable --out") from None
    return root


def start_or_resume(root: str | os.PathLike, identity: dict, *, overwrite: bool) -> bool:
    """Prepare `root` for the dump `identity` describes (everything that decides the store's content).

    An unfinished dump of the same identity is resumed (-> True: keep its complete shards); one of
    another identity is an error unless `overwrite`; anything else starts from scratch (-> False).
    The caller holds the store's lock.
    """
    root = Path(root)
    check_destination(root)
    pending = root / PENDING_NAME
    resume = False
    if not (root / MANIFEST_NAME).exists() and pending.is_file() and not overwrite:
        try:
            previous = json.loads(pending.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            previous = None
        mine = json.loads(json.dumps(identity))
        if previous == mine:
            resume = True
        elif isinstance(previous, dict):
            differ = _differences(previous, mine)
            raise StoreConflictError(
                f"{root} holds an unfinished dump made with other arguments (they differ in: {', '.join(differ)}): "
                f"rerun that dump's command to resume it, or pass --overwrite to start over"
            )
    if resume:
        shutil.rmtree(root / TMP_DIR, ignore_errors=True)  # partial writes of the crashed run
        (root / TMP_DIR).mkdir()
        return True
    prepare_store_dir(root, overwrite=overwrite)
    tmp = root / TMP_DIR / PENDING_NAME
    tmp.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, pending)
    return False


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (one level into nested objects is enough to name the cause)."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict) and not prefix:
            out += _differences(x, y, f"{key}.")
        elif x != y:
            out.append(prefix + key)
    return out


def completed_shards(root: str | os.PathLike, backend_name: str, plan: ShardPlan, *, top_k: int, num_temperatures: int,
                     index_dtype: str, vocab_size: int, draws: int = 0, codec: Codec = Codec(), views: int = 0) -> dict[int, ShardInfo]:
    """Shards of an unfinished dump that are in place and sound (decode, validate, ids as planned).
    A shard that fails is deleted, so it is written again."""
    root = Path(root)
    backend = get_backend(backend_name)
    done = {}
    for j in range(plan.num_shards):
        name = shard_name(j, backend_name)
        path = root / name
        if not path.exists():
            continue
        try:
            data = codec.decode(backend.read(str(path)))
            data.validate(top_k=top_k, num_temperatures=num_temperatures, index_dtype=index_dtype, vocab_size=vocab_size, draws=draws, views=views)
            if (data.num_samples, int(data.sample_id[0]), int(data.sample_id[-1])) != (int(plan.counts[j]), int(plan.first_ids[j]), int(plan.last_ids[j])):
                raise ShardDataError("ids differ from the plan")
            sha, nbytes = shard_checksum(path)
        except Exception:  # any damage at all: write it again
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            continue
        done[j] = ShardInfo(index=j, name=name, first_id=int(data.sample_id[0]), last_id=int(data.sample_id[-1]),
                            num_samples=data.num_samples, num_positions=data.num_positions, num_bytes=nbytes, sha256=sha)
    return done


def write_shard(root: str | os.PathLike, backend_name: str, index: int, data: ShardData, *,
                top_k: int, num_temperatures: int, index_dtype: str, vocab_size: int, draws: int = 0,
                codec: Codec = Codec(), views: int = 0) -> ShardInfo:
    """Validate `data` (top-k by descending logit), encode it with `codec`, write it under a
    temporary name, then rename it into place.

    The caller owns shard `index` exclusively (one task per shard).
    """
    data.validate(top_k=top_k, num_temperatures=num_temperatures, index_dtype=index_dtype, vocab_size=vocab_size, draws=draws, views=views)
    root = Path(root)
    name = shard_name(index, backend_name)
    final = root / name
    tmp = root / TMP_DIR / f"{Path(name).name}.{uuid.uuid4().hex}"
    backend = get_backend(backend_name)
    try:
        backend.write(str(tmp), codec.encode(data))
        sha, nbytes = shard_checksum(tmp)
        if final.exists():  # a retried task: the plan is deterministic, so the new copy replaces the old
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.rename(tmp, final)
    except BaseException as exc:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if _is_out_of_space(exc):
            raise StoreError(f"no space left to write shard {name} of {root}: free space, then rerun the same command to resume (finished shards are kept)") from None
        if isinstance(exc, PermissionError):
            raise StoreError(f"no permission to write shard {name} of {root}: make the store directory writable, then rerun the same command") from None
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


def commit_store(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Write the manifest last; the store is complete from this moment."""
    root = Path(root)
    shutil.rmtree(root / TMP_DIR, ignore_errors=True)
    try:
        path = write_manifest(root, manifest)
    except OSError as exc:
        raise StoreError(f"cannot write the manifest of {root} ({exc.strerror}): fix that, then rerun the same command; "
                         f"every shard is kept and the store stays incomplete until then") from None
    (root / PENDING_NAME).unlink(missing_ok=True)
    return path
