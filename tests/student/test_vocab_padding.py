"""A student whose vocabulary is padded differently from the teacher's (Qwen2.5-7B: 152,064 rows;
Qwen2.5-0.5B/3B: 151,936): it trains when every stored id, label and token fits its width, and
metrics.json says how much of the teacher's mass could lie beyond it; a stored id beyond the
width is a one-line error naming it, up front on the driver or in a worker's batch."""

from __future__ import annotations

import json

import pytest
import torch

from jobs import train_student
from tests.helpers import tiny_chat_tokenizer, write_jsonl
from trainer.errors import DataError
from trainer.student import vocab
from trainer.student.batches import Batch
from trainer.student.targets import TeacherTargets

TEACHER_VOCAB, STUDENT_VOCAB = 152_064, 151_936
ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What does json.{name} do?"},
            {"role": "assistant", "content": f"json.{name} turns text number {i} into Python values."},
        ]
    }
    for i, name in enumerate(["dumps", "loads", "dump", "load"] * 2)
]


def qwen2_config(vocab_size: int, hidden: int) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    }


def qwen2_teacher(path, tokens: int, beyond: int | None = None) -> str:
    """A tiny Qwen2 of 152,064 outputs whose real tokens (ids < `tokens`) carry most of its mass, as
    a trained model's do; with `beyond`, output row `beyond` copies a real token's, scaled up, so
    that padding id lands in the stored top-k."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**qwen2_config(TEACHER_VOCAB, 16)))
    with torch.no_grad():
        weight = model.lm_head.weight
        weight[tokens:] = 0.0  # padding rows: logit 0, far below the real tokens' top ones
        weight[:tokens] *= 40.0
        if beyond is not None:
            weight[beyond] = 3.0 * weight[100]
    model.save_pretrained(path)
    return f"hf:{path}"


@pytest.fixture(scope="module")
def padded(dump, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("padded")
    tok = tiny_chat_tokenizer(tmp / "teacher")
    tiny_chat_tokenizer(tmp / "wrong")
    data = write_jsonl(tmp / "chat.jsonl", ROWS)
    store = dump(teacher=qwen2_teacher(tmp / "teacher", len(tok)), dataset=data, top_k=8, seq_len=64, batch_size=4)
    wrong = dump(
        teacher=qwen2_teacher(tmp / "wrong", len(tok), beyond=152_000), dataset=data, top_k=8, seq_len=64, batch_size=4
    )
    (tmp / "student.json").write_text(json.dumps(qwen2_config(STUDENT_VOCAB, 8)))
    return tmp, store, wrong


@pytest.mark.slow
@pytest.mark.battery  # CI: test_every_batch_is_checked_against_the_width, test_bad_input's width test
def test_a_student_of_another_padding_trains_and_reports_the_mass_it_cannot_hold(padded, capsys):
    tmp, store, wrong = padded
    student = f"hf-config:{tmp / 'student.json'}"
    out = tmp / "run"
    argv = ["--store", store, "--eval-store", store, "--student", student, "--output", str(out)]
    argv += ["--epochs", "1", "--batch-size", "4", "--temperature", "1"]
    assert train_student.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    padding = metrics["vocab_padding"]
    assert padding["store_vocab_size"] == TEACHER_VOCAB and padding["student_widths"] == [STUDENT_VOCAB]
    assert 0.0 < padding["tail_mass_upper_bound"][0] < 1.0 and padding["tail_mass_positions"] > 0
    assert metrics["eval_perplexity"] > 1.0 and metrics["eval_kl_to_teacher"] >= 0.0

    # A stored id the student cannot represent: refused up front, naming it, nothing trained.
    capsys.readouterr()
    bad = tmp / "bad-run"
    argv = ["--store", wrong, "--student", student, "--output", str(bad), "--epochs", "1"]
    assert train_student.main(argv) != 0
    err = capsys.readouterr().err
    assert "stored id 152000" in err and f"({STUDENT_VOCAB} classes)" in err and len(err.strip().splitlines()) == 1
    assert not (bad / "metrics.json").exists()


def _batch(topk_index, labels, inputs, topk_count=None) -> Batch:
    n, k = topk_index.shape
    targets = TeacherTargets("topk", (1.0,), topk_index, torch.zeros(n, k), torch.zeros(n, 1), topk_count=topk_count)
    return Batch(torch.arange(3), inputs, labels, None, targets, torch.zeros(3, dtype=torch.int64))


def test_every_batch_is_checked_against_the_width():
    """What a worker checks on each batch: stored ids (adaptive padding columns excepted), labels, tokens."""
    ids = torch.tensor([[5, 9], [7, 11], [3, 2]])
    features = torch.zeros(3, 4)
    vocab.check_batch(_batch(ids, torch.tensor([1, -1, 11]), features), 12, "s")
    with pytest.raises(DataError, match=r"stored id 11 \(entry 3\), beyond what --student s outputs \(11 classes\)"):
        vocab.check_batch(_batch(ids, torch.tensor([1, 2, 3]), features), 11, "s")
    # An adaptive head's padding column may hold any id: it is not a class.
    vocab.check_batch(_batch(ids, torch.tensor([1, 2, 3]), features, topk_count=torch.tensor([2, 1, 2])), 11, "s")
    with pytest.raises(DataError, match="label 12"):
        vocab.check_batch(_batch(ids, torch.tensor([1, 12, 3]), features), 12, "s")
    with pytest.raises(DataError, match="token 40"):
        vocab.check_batch(_batch(ids, torch.tensor([1, 2, 3]), torch.tensor([[1, 40], [2, 3], [4, 5]])), 12, "s")
