"""The teacher replica's reductions: chunked equals whole, draws equal a dense count, an hf: teacher
loads from its files in the dump's precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_llama

from logitstore import Selection, StoreLayout
from trainer.teacher.scorer import TeacherScorer, draw_teacher_samples

VOCAB = 3_000


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama") / "m", VOCAB)


def token_batch(lengths: list[int], seq_len: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.zeros((len(lengths), seq_len), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(0, VOCAB, n)
    return {
        "id": np.arange(len(lengths), dtype=np.int64) * 3 + 1,
        "shard": np.zeros(len(lengths), dtype=np.int64),
        "input_ids": ids,
        "length": np.array(lengths, dtype=np.int64),
    }


def layout(selection: Selection) -> StoreLayout:
    return StoreLayout.make(
        backend="zarr",
        top_k=8,
        vocab_size=VOCAB,
        temperatures=(1.0, 2.0, 3.0),
        shard_size=64,
        selection=selection,
        index_codec="plain",
        value_codec="float32",
        value_bits=None,
        views=None,
    )


@pytest.mark.parametrize(
    "selection", [Selection(), Selection("sample", 50, 1.0, 7), Selection("hybrid", 20, 1.0, 7)], ids=lambda s: s.kind
)
def test_chunks_of_whole_samples_store_what_one_pass_stores(llama, selection):
    batch = token_batch([40, 7, 33, 1, 40])
    whole = TeacherScorer(llama, None, layout(selection), "fp32", 1, chunk_bytes=1 << 40)
    # At most 45 positions of fp32 logits per chunk: 3 chunks here, one sample never split.
    chunked = TeacherScorer(llama, None, layout(selection), "fp32", 1, chunk_bytes=45 * 4 * VOCAB)
    assert whole.init_error is None and chunked.init_error is None
    assert chunked._chunks(batch["length"], VOCAB) == [
        (0, 40, 0, 1),
        (40, 81, 1, 4),
        (81, 121, 4, 5),
    ]
    a, b = whole.score(batch), chunked.score(batch)
    assert a.keys() == b.keys() and ("sample_index" in a) == selection.sampled
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_the_output_layer_runs_chunk_by_chunk_with_the_values_of_the_whole_forward(llama):
    """An hf: teacher's logits are made per chunk from its hidden states (no [B, T, V] tensor); the
    stored values are those of the model's own forward, to float32 rounding."""
    batch = token_batch([40, 7, 33, 1, 40])
    split = TeacherScorer(llama, None, layout(Selection()), "fp32", 1, chunk_bytes=45 * 4 * VOCAB)
    whole = TeacherScorer(llama, None, layout(Selection()), "fp32", 1, chunk_bytes=45 * 4 * VOCAB)
    assert split.split_head
    whole.split_head = False  # the model's forward, then chunks of its logits
    a, b = split.score(batch), whole.score(batch)
    np.testing.assert_array_equal(a["topk_index"], b["topk_index"])
    for key in ("topk_logit", "logsumexp"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_an_hf_teacher_loads_from_its_files_in_the_dumps_precision(llama):
    scorer = TeacherScorer(llama, None, layout(Selection()), "bf16", 1)
    assert scorer.init_error is None
    assert {p.dtype for p in scorer.model.parameters()} == {torch.bfloat16}
    out = scorer.score(token_batch([5, 9]))
    assert out["topk_logit"].dtype == np.float32 and out["topk_logit"].shape == (14, 8)


def test_a_teacher_placed_by_device_map_scores_as_one_on_a_single_device(llama):
    """--gpus-per-worker N > 1 loads the teacher with device_map="auto" (accelerate). Without GPUs
    accelerate places every layer on the CPU: the code path runs here, the spread over several GPUs
    only on a GPU machine."""
    pytest.importorskip("accelerate")
    batch = token_batch([40, 7, 33])
    single = TeacherScorer(llama, None, layout(Selection("hybrid", 20, 1.0, 7)), "fp32", 1)
    mapped = TeacherScorer(llama, None, layout(Selection("hybrid", 20, 1.0, 7)), "fp32", 1, gpus=2)
    assert mapped.init_error is None and mapped.device == torch.device("cpu")
    a, b = single.score(batch), mapped.score(batch)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("vocab,draws", [(40, 12), (5, 12), (500, 2_644)])
def test_draws_are_the_counts_of_a_dense_reference(vocab, draws):
    z = torch.randn(32, vocab) * 3
    head = z.topk(3, dim=1).indices
    for exclude in (None, head):
        index, count = draw_teacher_samples(z, 1.5, draws, torch.Generator().manual_seed(3), exclude)
        # The plain reference: the same draws counted in a dense [N, V] matrix.
        logits = (z / 1.5) if exclude is None else (z / 1.5).scatter(1, exclude, float("-inf"))
        picks = torch.multinomial(torch.softmax(logits, 1), draws, True, generator=torch.Generator().manual_seed(3))
        dense = torch.zeros(32, vocab, dtype=torch.int64).scatter_add_(1, picks, torch.ones_like(picks))
        assert index.shape == count.shape == (32, min(draws, vocab))
        assert (count.sum(1) == draws).all()
        for row in range(32):
            kept = count[row] > 0
            assert torch.equal(dense[row, index[row][kept]], count[row][kept])
            assert int(kept.sum()) == int((dense[row] > 0).sum())
            # by descending count, ties by ascending id
            keys = [(-int(c), int(i)) for c, i in zip(count[row][kept], index[row][kept])]
            assert keys == sorted(keys)
        if exclude is not None:
            assert not (index.unsqueeze(2) == exclude.unsqueeze(1))[count > 0].any()
