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
from logitstore.testing.builders import TEST_FEATURES

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
STORES = sorted(p.name[: -len(".expected.json")] for p in GOLDEN_DIR.glob("*.expected.json"))
SCHEMA = json.loads((Path(logitstore.__file__).parent / "manifest.schema.json").read_text())


def digest(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def test_the_golden_table_describes_every_pinned_store():
    """scripts/make_golden.py's table is the record of how each store was made: its version, and the
    k, backend and codec its flags give, are the store's."""
    from scripts.make_golden import GOLDEN

    assert sorted(GOLDEN) == STORES
    for name, golden in GOLDEN.items():
        m = json.loads((GOLDEN_DIR / name / "manifest.json").read_text())
        flags = dict(zip(golden.flags[::2], golden.flags[1::2]))
        assert m["format_version"] == golden.version, name
        assert m["backend"] == flags.get("--format", "zarr") and m["top_k"] == int(flags.get("--top-k", 5)), name
        assert m.get("codec", {}).get("index", "plain") == flags.get("--index-codec", "plain"), name
        assert (m["shards"][0]["name"].count(".") > 1) == golden.on_s3, name


def test_every_format_version_and_layout_is_pinned():
    versions = {json.loads((GOLDEN_DIR / name / "manifest.json").read_text())["format_version"] for name in STORES}
    assert versions == {1, 2, 3, 4, 5, 6, 7, 8, 9} and len(STORES) == 21


@pytest.mark.parametrize("name", STORES)
def test_a_golden_store_reads_exactly_as_its_writer_read_it(name):
    expected = json.loads((GOLDEN_DIR / f"{name}.expected.json").read_text())
    reader = StoreReader(GOLDEN_DIR / name)
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
    projection = reader.feature_projection()
    assert [digest(p) for p in projection or []] == expected.get("feature_projection", [])


@pytest.mark.parametrize("name", STORES)
def test_a_golden_manifest_follows_the_schema(name):
    jsonschema.Draft202012Validator(SCHEMA).validate(json.loads((GOLDEN_DIR / name / "manifest.json").read_text()))


@pytest.mark.parametrize(
    "draws, top_p, features", [(0, None, None), (4, None, None), (0, 0.5, None), (0, None, TEST_FEATURES)]
)
def test_a_freshly_written_manifest_follows_the_schema(tmp_path, draws, top_p, features):
    build_store(tmp_path / "st", "zarr", np.arange(12), draws=draws, top_p=top_p, features=features)
    manifest = json.loads((tmp_path / "st" / "manifest.json").read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(manifest)
    for wrong in (1 if draws else 5, 5 if top_p or features else 6, *((8, 6) if features else ())):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(SCHEMA).validate({**manifest, "format_version": wrong})
