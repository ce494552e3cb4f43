"""A store that carries its inputs is its own training data: a student trained from it alone equals,
metric for metric, one trained with the dataset it was dumped from; a dataset that is not that data
is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs import train_student
from tests.helpers import run, tiny_chat_tokenizer, tiny_llama, write_jsonl

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What does json.{name} do?"},
            {"role": "assistant", "content": f"json.{name} handles JSON text number {i}."},
        ]
    }
    for i, name in enumerate(["dumps", "loads", "dump", "load", "JSONDecoder", "JSONEncoder"] * 4)
]


@pytest.fixture(scope="module")
def chat_store(dump, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    tok = tiny_chat_tokenizer(root / "teacher")
    tiny_llama(root / "teacher", len(tok), max_positions=128)
    tiny_llama(root / "student", len(tok), max_positions=128, seed=1)
    data = write_jsonl(root / "chat.jsonl", ROWS)
    store = dump(teacher=f"hf:{root / 'teacher'}", dataset=data, top_k=8, seq_len=128, shard_size=5)
    return {"store": store, "data": data, "student": f"hf:{root / 'student'}", "root": root}


def batches(ds) -> list[dict]:
    import copy

    import ray.data

    context = ray.data.DataContext.get_current()
    saved = copy.copy(context.execution_options)
    context.execution_options.preserve_order = True  # as the trainer reads them
    try:
        return list(ds.iter_batches(batch_size=1, batch_format="numpy"))
    finally:
        context.execution_options = saved


def test_the_store_alone_gives_the_batches_its_dataset_gives(chat_store):
    from logitstore import read_manifest
    from trainer.inputs.datasets import TextOptions, load_dataset
    from trainer.student.join import JoinSpec, join_with_store, store_batches

    manifest = read_manifest(chat_store["store"])
    spec = JoinSpec(chat_store["store"], manifest, (1.0, 2.0), batch_size=4, seed=3, window=10)
    text = TextOptions(hf_tokenizer=str(chat_store["root"] / "teacher"), seq_len=128)
    joined = batches(join_with_store(load_dataset(chat_store["data"], "--dataset", text), spec))
    alone = batches(store_batches(spec))
    assert len(joined) == len(alone) == 8
    for a, b in zip(alone, joined):
        assert set(a) <= set(b) and {"input_ids", "loss_mask", "offsets", "topk_index", "logsumexp"} <= set(a)
        for key in a:
            x, y = a[key][0], b[key][0]
            assert x.shape == y.shape and np.array_equal(x, y), key


@pytest.mark.slow
@pytest.mark.battery
def test_a_student_trained_from_the_store_alone_equals_one_trained_with_its_dataset(chat_store, tmp_path):
    common = ["--store", chat_store["store"], "--student", chat_store["student"], "--epochs", "2"]
    common += ["--batch-size", "4", "--shuffle-window", "10", "--seed", "3"]
    assert train_student.main([*common, "--output", str(tmp_path / "alone")]) == 0
    assert train_student.main([*common, "--dataset", chat_store["data"], "--output", str(tmp_path / "joined")]) == 0
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    joined = json.loads((tmp_path / "joined" / "metrics.json").read_text())
    losses = [k for k in alone if k.startswith("train_")]
    assert losses and all(alone[k] == joined[k] for k in losses), {k: (alone[k], joined[k]) for k in losses}

    def figures(epochs):  # every epoch's figures but its time
        timing = {"epoch_seconds", "first_batch_seconds", "started_at", "loop_started_at"}
        return [{k: v for k, v in e.items() if k not in timing} for e in epochs]

    assert len(alone["epochs"]) == 2 and figures(alone["epochs"]) == figures(joined["epochs"])


def test_a_dataset_that_is_not_the_stores_is_refused(chat_store, tmp_path, capsys):
    other = write_jsonl(
        tmp_path / "other.jsonl",
        ROWS[:-1] + [{"messages": ROWS[0]["messages"][:1] + [{"role": "assistant", "content": "something else"}]}],
    )
    argv = ["--store", chat_store["store"], "--dataset", other, "--student", chat_store["student"]]
    code, errors = run(train_student.main, [*argv, "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and len(errors) == 1 and "the inputs differ from those the teacher saw" in errors[0]
    assert not (tmp_path / "out" / "metrics.json").exists()
