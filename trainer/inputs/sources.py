"""What a dataset's rows are made from, fingerprinted without Ray (light: no Ray, no torch), so a
rerun of a complete dump can answer from the manifest alone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from trainer.inputs import registry
from trainer.inputs.datafiles import is_object_uri
from trainer.inputs.specs import is_callable_spec, parquet_files
from trainer.inputs.textfiles import text_files


def source_sha256(spec: str) -> str | None:
    """A digest of everything a dataset's rows are made from, computed here without Ray: each
    local file's name (relative to the spec), length and bytes (text, parquet), a built-in's corpus
    files or arrays. None where only reading the rows would tell: a module:function dataset, files
    on object storage. With the same tokenizer and arguments, the same digest means the same rows."""
    digest = hashlib.sha256()
    if spec in registry.DATASETS:
        if registry.is_text(spec):
            return hashlib.sha256(repr(sorted(registry.text_identity(spec).items())).encode()).hexdigest()
        rows = registry.DATASETS[spec].make()
        for key in sorted(rows):
            value = np.ascontiguousarray(rows[key])
            digest.update(f"{key}\0{value.dtype.str}\0{value.shape}\0".encode() + value.tobytes())
        return digest.hexdigest()
    if is_object_uri(spec) or (is_callable_spec(spec) and not Path(spec).exists()) or not Path(spec).exists():
        return None
    root = Path(spec)
    texts = text_files(root)
    files = [Path(f.path) for f in texts] if texts is not None else [Path(f) for f in parquet_files(root)]
    for path in sorted(files):
        name = path.name if root.is_file() else path.relative_to(root).as_posix()
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
