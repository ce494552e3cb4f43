"""Per-token teacher logits on real text (the stdlib corpus): variable positions per sample, both backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logitstore import StoreReader, read_manifest
from trainer.builtin.stdlib.corpus import corpus_files, corpus_fingerprint
from trainer.builtin.stdlib.gpt import GPT, GPTConfig
from trainer.inputs.datasets import TEXT_PARTS, TextOptions, text_part
from trainer.inputs.tokenizers import pack_blocks

DATASET = "stdlib-small-eval"


def blocks():
    """-> ids, input_ids, lengths of DATASET, exactly as the data loader builds them."""
    parts = [text_part(DATASET, p, TextOptions()) for p in range(TEXT_PARTS)]
    return tuple(np.concatenate([part[key] for part in parts]) for key in ("id", "input_ids", "length"))


def test_pack_blocks_masks_only_the_tail():
    ids, lengths = pack_blocks([np.arange(5), np.arange(7)], seq_len=4)
    assert ids.shape == (3, 4) and lengths.tolist() == [4, 4, 4]
    ids, lengths = pack_blocks([np.arange(1, 6)], seq_len=4)
    assert lengths.tolist() == [4, 1] and ids[1].tolist() == [5, 0, 0, 0]


def test_corpus_split_is_by_file_and_disjoint():
    train, eval_ = corpus_files("train"), corpus_files("eval")
    assert train and eval_ and not set(train) & set(eval_)
    assert all("site-packages" not in p.parts for p in train + eval_)
    assert corpus_fingerprint(eval_[:3]) == corpus_fingerprint(eval_[:3]) != corpus_fingerprint(eval_[1:4])


def test_gpt_is_causal():
    model = GPT(GPTConfig(vocab_size=50, seq_len=16, width=16, depth=2, heads=2)).eval()
    x = torch.randint(0, 50, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 50
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :10], model(y)[:, :10])


@pytest.mark.parametrize("fmt", ["zarr", "arrow"])
def test_per_token_topk_matches_the_teacher(dump, lm_teacher, fmt):
    store = dump(teacher="lm_models:tiny_gpt", dataset=DATASET, top_k=8, format=fmt, shard_size=128)
    ids, input_ids, lengths = blocks()
    m = read_manifest(store)
    assert m.num_samples == len(lengths) and m.num_positions == int(lengths.sum())
    assert m.vocab_size == 256 and m.index_dtype == "uint16" and len(m.shards) == -(-len(lengths) // 128)
    assert m.tokenizer.to_json() == {"kind": "bytes", "vocab_size": 256}
    assert m.dataset["corpus"]["sha256"] == corpus_fingerprint(corpus_files("eval", 8))
    reader = StoreReader(store)
    picks = np.array([0, 1, 200, len(lengths) - 1])  # the last block is a short one
    assert lengths[-1] < 128
    got = reader.lookup(ids[picks])
    with torch.no_grad():
        for row, block in enumerate(picks):
            n = int(lengths[block])
            positions = got.positions_of(row)
            assert positions.stop - positions.start == n
            z = lm_teacher.eval()(torch.from_numpy(input_ids[block : block + 1, :n]))[0]
            values, index = z.topk(8, dim=-1)
            np.testing.assert_allclose(got.topk_logit[positions], values.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(
                got.logsumexp[positions, 1], torch.logsumexp(z / 2.0, dim=-1).numpy(), rtol=1e-5, atol=1e-5
            )
            assert np.mean(got.topk_index[positions] == index.numpy()) > 0.99  # ties may swap order


def test_sequence_stores_are_identical_across_backends(dump, lm_teacher):
    a = dump(teacher="lm_models:tiny_gpt", dataset=DATASET, top_k=8, format="zarr", shard_size=128)
    b = dump(teacher="lm_models:tiny_gpt", dataset=DATASET, top_k=8, format="arrow", shard_size=128)
    for (_, x), (_, y) in zip(StoreReader(a).iter_shards(), StoreReader(b).iter_shards()):
        assert x.equals(y)
    assert read_manifest(a).dataset == read_manifest(b).dataset


def test_a_compact_codec_dump_holds_the_same_top_k(dump, lm_teacher):
    """delta ids + logq values through the real dump: per position the same k class ids, the same
    top-1, logits within the quantizer's step, and the tail mass of the exact dump."""
    exact = dump(teacher="lm_models:tiny_gpt", dataset=DATASET, top_k=8, format="zarr", shard_size=128)
    compact = dump(
        teacher="lm_models:tiny_gpt",
        dataset=DATASET,
        top_k=8,
        format="arrow",
        shard_size=128,
        index_codec="delta",
        value_codec="logq",
        value_bits=8,
    )
    m = read_manifest(compact)
    assert m.format_version == 5 and m.codec.to_json() == {"index": "delta", "values": "logq", "bits": 8}
    assert m.num_bytes < read_manifest(exact).num_bytes
    for (_, x), (_, y) in zip(StoreReader(exact).iter_shards(), StoreReader(compact).iter_shards()):
        assert np.array_equal(x.sample_id, y.sample_id) and np.array_equal(x.position_offsets, y.position_offsets)
        assert np.array_equal(np.sort(x.topk_index, axis=1), np.sort(y.topk_index, axis=1))
        assert np.array_equal(x.topk_index[:, 0], y.topk_index[:, 0])  # the teacher's top-1, exactly
        z = x.topk_logit.astype(np.float64)
        for r, t in enumerate(m.temperatures):
            rest = 1 - np.exp(z / t - x.logsumexp[:, r : r + 1]).sum(axis=1)
            np.testing.assert_allclose(y.extras["rest_mass"][:, r], np.clip(rest, 0, 1), rtol=2e-2, atol=1e-6)
        order_x, order_y = np.argsort(x.topk_index, axis=1), np.argsort(y.topk_index, axis=1)
        gap_x = x.topk_logit[:, :1] - np.take_along_axis(x.topk_logit, order_x, axis=1)
        gap_y = y.topk_logit[:, :1] - np.take_along_axis(y.topk_logit, order_y, axis=1)
        assert np.abs(gap_x - gap_y).max() < 0.5 and np.abs(gap_x - gap_y).mean() < 0.02


@pytest.mark.slow
@pytest.mark.battery  # CI: test_hybrid_store_distils_and_checks_its_temperature
def test_per_token_distillation_moves_the_student_towards_the_teacher(dump, lm_teacher, tmp_path):
    import json

    from jobs import train_student

    store = dump(teacher="lm_models:tiny_gpt", dataset=DATASET, top_k=8, format="zarr", shard_size=128)
    argv = [
        "--store",
        store,
        "--dataset",
        DATASET,
        "--eval-dataset",
        DATASET,
        "--eval-store",
        store,
        "--student",
        "stdlib-gpt-student",
        "--output",
        str(tmp_path / "lm"),
        "--epochs",
        "3",
        "--eval-every",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "0.003",
        "--temperature",
        "1",
        "--alpha",
        "1",
    ]
    assert train_student.main(argv) == 0
    m = json.loads((tmp_path / "lm" / "metrics.json").read_text())
    kl = [e["eval_kl_to_teacher"] for e in m["epochs"]]
    assert kl[-1] < kl[0] and kl[-1] >= 0
    assert m["epochs"][-1]["train_positions"] == int(blocks()[2].sum())
    assert 1.0 < m["eval_perplexity"] < 256.0 and 0.0 <= m["teacher_agreement"] <= 1.0


# CI: tests/teacher/test_dump.py::test_two_worker_dump_equals_one_worker_dump (workers) and
# test_hybrid_tail_draws_exclude_the_head (draws)
@pytest.mark.battery
def test_sampled_draws_are_valid_and_independent_of_workers(dump, lm_teacher):
    one = dump(
        teacher="lm_models:tiny_gpt", dataset=DATASET, top_k=1, selection="sample", draws=12, shard_size=128, workers=1
    )
    two = dump(
        teacher="lm_models:tiny_gpt", dataset=DATASET, top_k=1, selection="sample", draws=12, shard_size=128, workers=2
    )
    m = read_manifest(one)
    assert m.format_version == 5 and m.selection.kind == "sample" and m.draws == 12
    for (_, a), (_, b) in zip(StoreReader(one).iter_shards(), StoreReader(two).iter_shards()):
        assert a.equals(b)
        assert (a.extras["sample_count"].astype(int).sum(axis=1) == 12).all()
    # Exactly the teacher's draws for that sample id's seed, recomputed here.
    from trainer.teacher.scorer import draw_teacher_samples

    ids, input_ids, lengths = blocks()
    row = len(ids) - 3  # in the last part: a large id
    got = StoreReader(one).lookup(ids[row : row + 1])
    with torch.no_grad():
        z = lm_teacher.eval()(torch.from_numpy(input_ids[row : row + 1, : lengths[row]]))[0]
    generator = torch.Generator().manual_seed(0 * 1_000_003 + int(ids[row]))
    index, count = draw_teacher_samples(z, 1.0, 12, generator=generator)
    np.testing.assert_array_equal(got.extras["sample_count"], count.numpy())
    np.testing.assert_array_equal(got.extras["sample_index"][count.numpy() > 0], index.numpy()[count.numpy() > 0])


def test_hybrid_tail_draws_exclude_the_head(dump, lm_teacher):
    store = dump(teacher="lm_models:tiny_gpt", dataset=DATASET, top_k=4, selection="hybrid", draws=8, shard_size=128)
    data = StoreReader(store).read_shard(1)
    drawn = np.where(data.extras["sample_count"] > 0, data.extras["sample_index"].astype(int), -1)
    assert not (drawn[:, :, None] == data.topk_index[:, None, :].astype(int)).any()


@pytest.mark.slow
def test_hybrid_store_distils_and_checks_its_temperature(dump, lm_teacher, tmp_path, capsys):
    import json

    from jobs import train_student

    store = dump(teacher="lm_models:tiny_gpt", dataset=DATASET, top_k=4, selection="hybrid", draws=8, shard_size=128)
    eval_store = dump(teacher="lm_models:tiny_gpt", dataset=DATASET, top_k=8, format="zarr", shard_size=128)
    argv = [
        "--store",
        store,
        "--dataset",
        DATASET,
        "--eval-dataset",
        DATASET,
        "--eval-store",
        eval_store,
        "--student",
        "stdlib-gpt-student",
        "--output",
        str(tmp_path / "hy"),
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "0.003",
        "--temperature",
        "1",
        "--alpha",
        "1",
    ]
    assert train_student.main(argv + ["--temperature", "2"]) == 2
    assert "draws were made at (1)" in capsys.readouterr().err
    assert train_student.main(argv) == 0
    kl = [e["eval_kl_to_teacher"] for e in json.loads((tmp_path / "hy" / "metrics.json").read_text())["epochs"]]
    assert kl[-1] < kl[0]
