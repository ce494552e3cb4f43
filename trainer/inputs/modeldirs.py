"""Hugging Face model and tokenizer directories on object storage: `hf:s3://bucket/models/teacher`,
`--tokenizer s3://bucket/tokenizers/qwen`.

transformers loads directories, so each machine that needs one copies the objects under the prefix
into its own cache once (LOGITSTORE_CACHE, else ~/.cache/logitstore; never a disk shared with the
driver) and loads that copy. A copy is keyed by the prefix and every object's name, size and etag,
so new weights under the same prefix make a new copy; it appears under its final name by a rename,
whole or not at all, so concurrent first uses on one machine never see half a model. A machine
that only tokenises (a data task) copies everything but the weight files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from logitstore.storage import is_object_uri, open_storage
from trainer.settings import cache_dir

# What from_pretrained reads as weights, in every layout transformers saves them.
HF_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")

__all__ = ["HF_WEIGHT_SUFFIXES", "is_object_uri", "local_dir", "has_object", "cache_root"]


def cache_root() -> Path:
    return cache_dir() / "hf-models"


def has_object(uri: str, name: str) -> bool:
    """Whether the prefix `uri` holds the object `name` (one request, nothing copied)."""
    return open_storage(uri).size(name) is not None


def local_dir(path: str, *, weights: bool = True) -> str:
    """`path` itself when it is local; for a URI, this machine's copy of the objects below it
    (without the weight files when `weights` is False)."""
    if not is_object_uri(path):
        return path
    location = open_storage(path)
    objects = location.list_versions()
    wanted = {n: meta for n, meta in objects.items() if weights or not n.endswith(HF_WEIGHT_SUFFIXES)}
    key = json.dumps([location.uri, sorted((n, *meta) for n, meta in wanted.items())]).encode()
    target = cache_root() / hashlib.sha256(key).hexdigest()[:24]
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    total = sum(size for size, _ in wanted.values())
    if total > 256 << 20:
        print(f"copying {location.uri} ({len(wanted)} files, {total / 1e9:.2f} GB) to {target}", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".copying-"))
    try:
        location.download_many({name: staging / name for name in wanted})
        try:
            staging.rename(target)
        except OSError:  # another process on this machine made the same copy first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
