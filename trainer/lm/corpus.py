"""Real text on every machine: the Python standard library's own sources, split by file.

A file is in the eval split when the first byte of sha256(its path relative to the stdlib) is
below 13 (about 5% of files); site-packages is excluded. `max_files` keeps the first files in
sorted path order, for examples that must train in CPU minutes.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

SPLITS = ("train", "eval")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(split: str, max_files: int | None = None) -> list[Path]:
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r} (expected train or eval)")
    root = stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in path.relative_to(root).parts or not path.is_file():
            continue
        in_eval = hashlib.sha256(rel.encode()).digest()[0] < 13
        if in_eval == (split == "eval"):
            files.append(path)
    return files[:max_files] if max_files else files


def corpus_fingerprint(files: list[Path]) -> str:
    """sha256 over the files' relative paths and bytes, in order: which text, exactly."""
    root = stdlib_root()
    digest = hashlib.sha256()
    for f in files:
        data = f.read_bytes()
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()
