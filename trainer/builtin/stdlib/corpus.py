"""Real text on every machine: the Python standard library's own sources, split by file.

A file is in the eval split when the first byte of sha256(its path relative to the stdlib) is
below 13 (about 5% of files); site-packages is excluded. `max_files` keeps the first files in
sorted path order, for examples that must train in CPU minutes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from pathlib import Path

SPLITS = ("train", "eval")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(split: str, max_files: int | None = None) -> list[Path]:
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r} (expected train or eval)")
    return list(_split_files(split)[:max_files] if max_files else _split_files(split))


@functools.cache
def _split_files(split: str) -> tuple[Path, ...]:
    # Cached per process: every read task of every epoch asks again.
    root = stdlib_root()
    rels = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "__pycache__")]  # prune, do not walk
        base = Path(directory).relative_to(root)
        rels += [(base / n).as_posix() for n in names if n.endswith(".py")]
    files = []
    for rel in sorted(rels):
        in_eval = hashlib.sha256(rel.encode()).digest()[0] < 13
        if in_eval == (split == "eval") and (root / rel).is_file():
            files.append(root / rel)
    return tuple(files)


def corpus_fingerprint(files: list[Path]) -> str:
    """sha256 over the files' relative paths and bytes, in order: which text, exactly."""
    root = stdlib_root()
    digest = hashlib.sha256()
    for f in files:
        data = f.read_bytes()
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def identity(split: str, max_files: int | None = None) -> dict:
    """What a manifest records about this corpus: which files, exactly."""
    files = corpus_files(split, max_files)
    return {"name": "python-stdlib", "split": split, "files": len(files), "sha256": corpus_fingerprint(files)}
