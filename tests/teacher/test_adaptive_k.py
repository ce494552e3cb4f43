"""Adaptive top-k through the real dump: a chat store of `--top-p` heads holds, per assistant token,
exactly the fewest classes whose teacher mass at T = 1 reaches p (computed here independently with
plain transformers), and its batches reach the student with their head sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import tiny_chat_tokenizer, tiny_llama, write_jsonl
from tests.student.test_train_from_store import ROWS, batches

TOP_P, MIN_K, MAX_K = 0.7, 2, 8


@pytest.fixture(scope="module")
def adaptive_store(dump, tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    tok = tiny_chat_tokenizer(root / "teacher")
    tiny_llama(root / "teacher", len(tok), max_positions=128, init_std=1.0)  # peaked: heads of every size
    data = write_jsonl(root / "chat.jsonl", ROWS)
    store = dump(
        teacher=f"hf:{root / 'teacher'}",
        dataset=data,
        top_k=MAX_K,
        top_p=TOP_P,
        min_k=MIN_K,
        seq_len=128,
        shard_size=5,
        index_codec="delta",
        value_codec="logq",
    )
    return {"store": store, "teacher": root / "teacher"}


def test_each_position_holds_the_fewest_classes_reaching_top_p(adaptive_store):
    from transformers import AutoModelForCausalLM

    from logitstore import StoreReader

    reader = StoreReader(adaptive_store["store"])
    assert reader.manifest.format_version == 6 and reader.verify() == []
    model = AutoModelForCausalLM.from_pretrained(adaptive_store["teacher"], dtype=torch.float32).eval()
    got, want, margins = [], [], []
    for _, shard in reader.iter_shards():
        for row in range(shard.num_samples):
            ids, mask = shard.tokens.sample(row)
            with torch.inference_mode():
                z = model(torch.as_tensor(ids, dtype=torch.int64)[None]).logits[0].double()
            p = torch.softmax(z[torch.as_tensor(mask == 1)], dim=-1).sort(dim=-1, descending=True)
            mass = p.values.cumsum(-1)[:, :MAX_K]
            want.append(((mass < TOP_P).sum(-1) + 1).clamp(MIN_K, MAX_K).numpy())
            margins.append((mass - TOP_P).abs().min(-1).values.numpy())
            count = shard.extras["topk_count"][shard.positions_of(row)]
            got.append(count)
            # the stored classes are the teacher's top ones, and the padding is the top-1's id
            at = shard.positions_of(row)
            for j, c in enumerate(count):
                head = shard.topk_index[at][j]
                assert set(head[:c].tolist()) == set(p.indices[j, :c].tolist())
                assert (head[c:] == head[0]).all()
    got, want, margins = np.concatenate(got), np.concatenate(want), np.concatenate(margins)
    assert len(np.unique(got)) >= 4  # heads of several sizes: the test can tell them apart
    # fp32 in the dump, fp64 here: a count may differ only where the mass is within rounding of p
    assert np.all((got == want) | (margins < 1e-5)) and np.mean(got == want) > 0.99


def test_the_students_batches_carry_each_positions_head_size(adaptive_store):
    from logitstore import read_manifest
    from trainer.student.batches import BatchOptions, make_batch
    from trainer.student.join import JoinSpec, store_batches
    from trainer.student.losses import kd_loss

    manifest = read_manifest(adaptive_store["store"])
    spec = JoinSpec(adaptive_store["store"], manifest, (1.0,), batch_size=4, seed=0, window=10)
    rows = batches(store_batches(spec))
    assert rows and all("topk_count" in r for r in rows)
    batch = make_batch(rows[0], BatchOptions("topk", (1.0,)), 0, torch.device("cpu"))
    counts = batch.targets.topk_count
    assert counts is not None and counts.shape == (batch.targets.num_positions,)
    assert int(counts.min()) >= MIN_K and int(counts.max()) <= MAX_K
    logits = torch.randn(batch.targets.num_positions, manifest.vocab_size, requires_grad=True)
    loss = kd_loss(logits, batch.targets, 1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
