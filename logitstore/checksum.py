"""Content checksums and sizes of shards, which may be one file or a directory tree."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())


def shard_checksum(path: str | os.PathLike) -> tuple[str, int]:
    """sha256 and byte size of a shard, as FORMAT.md defines them.

    A file: sha256 of its bytes. A directory: sha256 over its files in sorted relative-path
    order, each fed as `relpath UTF-8 | 0x00 | size as 8-byte little-endian | bytes`, so a
    renamed, missing or extra file changes the digest as well as changed bytes.
    """
    path = Path(path)
    digest = hashlib.sha256()
    total = 0
    is_dir = path.is_dir()
    for f in _files_of(path):
        size = f.stat().st_size
        total += size
        if is_dir:
            digest.update(f.relative_to(path).as_posix().encode() + b"\0" + size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            while block := fh.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest(), total


def files_checksum(files: dict[str, bytes]) -> tuple[str, int]:
    """`shard_checksum` of a shard held in memory as {relative path: bytes} ({"": bytes} for a file
    shard, as a backend's `encode` gives it): the same digest as the shard written to disk."""
    digest = hashlib.sha256()
    if set(files) == {""}:
        digest.update(files[""])
        return digest.hexdigest(), len(files[""])
    for name in sorted(files):
        data = files[name]
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest(), sum(len(d) for d in files.values())
