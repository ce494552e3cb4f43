"""Stores written by older versions of the writer read back exactly, forever; every manifest,
old or new, is what logitstore/manifest.schema.json describes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import logitstore
from logitstore import StoreReader
from logitstore.testing import build_store

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
STORES = sorted(p.name[: -len(".expected.json")] for p in GOLDEN.glob("*.expected.json"))
SCHEMA = json.loads((Path(logitstore.__file__).parent / "manifest.schema.json").read_text())


def digest(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def test_every_format_version_and_layout_is_pinned():
    versions = {json.loads((GOLDEN / name / "manifest.json").read_text())["format_version"] for name in STORES}
    assert versions == {1, 2, 3, 4, 5, 6, 7, 8} and len(STORES) == 19


@pytest.mark.parametrize("name", STORES)
def test_a_golden_store_reads_exactly_as_its_writer_read_it(name):
    expected = json.loads((GOLDEN / f"{name}.expected.json").read_text())
    reader = StoreReader(GOLDEN / name)
    m = reader.manifest
    assert (m.format_version, m.backend, m.top_k, m.vocab_size, m.num_samples, m.num_positions) == (
        expected["format_version"],
        expected["backend"],
        expected["top_k"],
        expected["vocab_size"],
        expected["num_samples"],
        expected["num_positions"],
    )
    assert reader.verify() == []
    assert reader.num_shards == len(expected["shards"])
    for index, want in enumerate(expected["shards"]):
        got = {key: digest(a) for key, a in reader.read_shard(index).arrays().items()}
        assert got == want, f"{name} shard {index}"


@pytest.mark.parametrize("name", STORES)
def test_a_golden_manifest_follows_the_schema(name):
    jsonschema.Draft202012Validator(SCHEMA).validate(json.loads((GOLDEN / name / "manifest.json").read_text()))


@pytest.mark.parametrize("draws, top_p", [(0, None), (4, None), (0, 0.5)])
def test_a_freshly_written_manifest_follows_the_schema(tmp_path, draws, top_p):
    build_store(tmp_path / "st", "zarr", np.arange(12), draws=draws, top_p=top_p)
    manifest = json.loads((tmp_path / "st" / "manifest.json").read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(manifest)
    for wrong in (1 if draws else 5, 5 if top_p else 6):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(SCHEMA).validate({**manifest, "format_version": wrong})
