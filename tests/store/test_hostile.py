"""Hostile stores: a manifest or a shard made to break the reader gets one line naming the problem
(ManifestError: verify_store exits 2, not a readable store; ShardCorruptError: exit 1, damaged),
never a traceback, and a manifest's numbers never set what reading costs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import logitstore
from jobs import verify_store
from logitstore import ManifestError, ShardCorruptError, StoreReader
from logitstore.backends import get_backend
from logitstore.checksum import shard_checksum
from logitstore.manifest import parse_manifest
from logitstore.shard import ShardData
from logitstore.testing import CODECS, build_store

SCHEMA = json.loads((Path(logitstore.__file__).parent / "manifest.schema.json").read_text())


def one_line(message: str) -> bool:
    return "\n" not in message and 0 < len(message) < 250


def manifest_of(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())


def refused_manifest(store: Path, text: str, needle: str, capsys) -> None:
    """The store with this manifest text: the reader raises one line naming `needle`; verify exits 2."""
    (store / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=needle) as caught:
        StoreReader(store)
    assert one_line(str(caught.value)), str(caught.value)[:400]
    capsys.readouterr()
    assert verify_store.main([str(store)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and needle in err[0] and one_line(err[0])


@pytest.fixture
def sampled_store(tmp_path) -> Path:
    """A hybrid-selection store (it records a seed and draws)."""
    build_store(tmp_path / "st", "zarr", np.arange(10), draws=4)
    return tmp_path / "st"


def _edit(raw: dict, path: tuple, value) -> dict:
    raw = json.loads(json.dumps(raw))
    obj = raw
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value
    return raw


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# Each manifest below broke the reader with a traceback (RecursionError, OverflowError, ValueError),
# was accepted although its numbers overflow what uses them, or gave an error of many lines.
HOSTILE = {
    "nested 200,000 deep": (lambda t, raw: t[:-2] + ', "x": ' + _deep(200_000) + "}", "too deeply"),
    "config nested 100 deep": (
        lambda t, raw: json.dumps(_edit(raw, ("config",), {"a": json.loads(_deep(100))})),
        "nests deeper than 64",
    ),
    "NaN": (lambda t, raw: t.replace('"top_k": 4', '"top_k": NaN'), "NaN"),
    "Infinity": (lambda t, raw: json.dumps(_edit(raw, ("temperatures",), [float("inf")])), "Infinity"),
    "1e400": (lambda t, raw: json.dumps(_edit(raw, ("temperatures",), [1.0])).replace("[1.0]", "[1e400]"), "float"),
    "first_id -2**200": (lambda t, raw: json.dumps(_edit(raw, ("shards", 0, "first_id"), -(2**200))), "64-bit"),
    "last_id 2**63": (lambda t, raw: json.dumps(_edit(raw, ("shards", 1, "last_id"), 2**63)), "64-bit"),
    "5000 digits": (lambda t, raw: t[:-2] + ', "n": ' + "7" * 5000 + "}", "too long"),
    "temperature 2**2000": (lambda t, raw: json.dumps(_edit(raw, ("temperatures",), [2**2000])), "out of range"),
    "draws 10**1000": (lambda t, raw: json.dumps(_edit(raw, ("selection", "draws"), 10**1000)), "out of range"),
    "seed 2**64": (lambda t, raw: json.dumps(_edit(raw, ("selection", "seed"), 2**64)), "out of range"),
    "shard_size 2**63": (lambda t, raw: json.dumps(_edit(raw, ("shard_size",), 2**63)), "out of range"),
    "vocab_size 2**33": (
        lambda t, raw: json.dumps({**raw, "vocab_size": 2**33, "index_dtype": "uint32"}),
        "out of range",
    ),
    "config seq_len a string": (lambda t, raw: json.dumps(_edit(raw, ("config",), {"seq_len": "64"})), "seq_len"),
    "lone surrogate": (lambda t, raw: json.dumps(_edit(raw, ("teacher", "spec"), "\ud800")), "not valid Unicode"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_manifest_is_one_line_and_exit_2(sampled_store, capsys, case):
    make, needle = HOSTILE[case]
    text = (sampled_store / "manifest.json").read_text()
    refused_manifest(sampled_store, make(text, json.loads(text)), needle, capsys)


def test_a_manifest_that_is_not_utf8_is_one_line(sampled_store):
    data = (sampled_store / "manifest.json").read_bytes()
    assert parse_manifest(data).num_samples == 10  # bytes are read as UTF-8
    at = data.index(b"random logits")
    with pytest.raises(ManifestError, match="not UTF-8") as caught:
        parse_manifest(data[:at] + b"\xff" + data[at + 1 :], source="m.json")
    assert one_line(str(caught.value)) and "offset" in str(caught.value)


def test_a_store_carrying_tokens_with_a_huge_seq_len_is_refused(tmp_path, capsys):
    build_store(tmp_path / "st", "arrow", np.arange(6), lengths=np.ones(6, np.int64), seq_len=4)
    raw = manifest_of(tmp_path / "st")
    refused_manifest(tmp_path / "st", json.dumps(_edit(raw, ("inputs", "seq_len"), 2**63)), "out of range", capsys)


def test_the_schema_bounds_what_the_reader_bounds(sampled_store):
    """Where a schema can say it, manifest.schema.json refuses the numbers the reader refuses."""
    raw = manifest_of(sampled_store)
    jsonschema.Draft202012Validator(SCHEMA).validate(raw)
    for path, value in (
        (("shard_size",), 2**63),
        (("selection", "seed"), 2**64),
        (("shards", 0, "num_bytes"), 2**62 + 1),
        (("num_samples",), 2**62 + 1),
        (("top_k",), 2**32 + 1),
    ):
        bad = _edit(raw, path, value)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(SCHEMA).validate(bad)
        with pytest.raises(ManifestError, match="out of range"):
            parse_manifest(json.dumps(bad))


# ---- shards whose arrays have another dtype than the format's -----------------------------------------
def rewrite_shard(store: Path, index: int, change) -> None:
    """Shard `index` written again through its real backend with `change(arrays)`, the manifest's
    checksum updated to match (what a writer with a bug, or a forger, would make)."""
    raw = manifest_of(store)
    backend = get_backend(raw["backend"])
    path = store / raw["shards"][index]["name"]
    arrays = change(backend.read(str(path)))
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    backend.write(str(path), arrays)
    sha, nbytes = shard_checksum(path)
    raw["shards"][index].update(sha256=sha, num_bytes=nbytes)
    (store / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "backend, codec, array, wrong, right",
    [
        ("zarr", "plain", "topk_logit", "float64", "float32"),
        ("arrow", "plain", "topk_logit", "float64", "float32"),
        ("arrow", "logq", "top1_logprob", "float32", "float16"),
        ("zarr", "logq", "log_rest", "float32", "float16"),
        ("arrow", "delta", "topk_index_gap_lo", "uint16", "uint8"),
        ("zarr", "logq", "topk_code", "uint16", "uint8"),
    ],
)
def test_an_array_of_another_dtype_is_damage_named_before_decoding(
    tmp_path, capsys, backend, codec, array, wrong, right
):
    store = tmp_path / "st"
    build_store(store, backend, np.arange(20), codec=CODECS[codec])
    rewrite_shard(store, 1, lambda a: {**a, array: a[array].astype(wrong)})
    reader = StoreReader(store)
    reader.read_shard(0)  # the others are sound
    with pytest.raises(
        ShardCorruptError, match=f"{array} has dtype {wrong}, where the format stores {right}"
    ) as caught:
        reader.read_shard(1)
    assert one_line(str(caught.value))
    capsys.readouterr()
    assert verify_store.main([str(store)]) == 1
    damaged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("damaged:")]
    assert len(damaged) == 1 and f"{array} has dtype {wrong}" in damaged[0] and one_line(damaged[0])


# ---- adaptive top-k: the padding is what the shard holds, not what the manifest says -----------------
def test_a_hostile_top_k_costs_nothing_the_shards_set_the_width(tmp_path, capsys):
    store = tmp_path / "st"
    written = build_store(store, "zarr", np.arange(40), k=8, vocab=40, shard_size=7, top_p=0.5)
    widest = [int(s.extras["topk_count"].max()) for s in written]
    assert len(set(widest)) > 1  # the shards' heads differ in width: joining them pads
    raw = manifest_of(store)
    (store / "manifest.json").write_text(json.dumps({**raw, "top_k": 60_000, "vocab_size": 60_000}))
    reader = StoreReader(store)
    assert reader.manifest.top_k == 60_000
    for index, shard in reader.iter_shards():
        assert shard.top_k == widest[index]  # [P, 60000] before
    assert reader.verify() == []
    everything = reader.lookup(np.arange(40)[::-1])
    assert everything.top_k == max(widest)
    count = everything.extras["topk_count"]
    pad = np.arange(everything.top_k) >= count[:, None]
    # padding as FORMAT.md says, in the rows of every shard: the column-0 id, the smallest stored logit
    assert np.array_equal(everything.topk_index[pad], np.broadcast_to(everything.topk_index[:, :1], pad.shape)[pad])
    smallest = np.where(pad, np.inf, everything.topk_logit).min(axis=1, keepdims=True)
    assert np.array_equal(everything.topk_logit[pad], np.broadcast_to(smallest, pad.shape)[pad])
    joined = ShardData.concat([reader.read_shard(j) for j in range(reader.num_shards)])
    assert joined.top_k == max(widest) and joined.num_positions == 40
    assert verify_store.main([str(store)]) == 0 and "all sound" in capsys.readouterr().out

    # A shard holding more entries per position than the manifest's top_k allows is damaged.
    (store / "manifest.json").write_text(json.dumps({**raw, "top_k": min(widest)}))
    damaged = [j for j, w in enumerate(widest) if w > min(widest)]
    with pytest.raises(ShardCorruptError, match="more than top_k"):
        StoreReader(store).read_shard(damaged[0])
    assert verify_store.main([str(store)]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("damaged:")]
    assert len(lines) == len(damaged) and all(one_line(line) for line in lines)
