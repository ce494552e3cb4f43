"""The Hugging Face-native showcase (trainer/builtin/stdlib/chat.py): a ChatML tokenizer of exactly 8192
tokens, its chat template and assistant mask, the docstring chat rows, and a Llama teacher that
save_pretrained writes and the Auto classes load back. Trains in the session's private cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trainer.builtin.stdlib import chat
from trainer.builtin.stdlib.corpus import corpus_files

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does json.dumps do?"},
    {"role": "assistant", "content": "Serialize obj to a JSON formatted str."},
    {"role": "user", "content": "And json.loads?"},
    {"role": "assistant", "content": "Deserialize s to a Python object."},
]
RENDERED = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nWhat does json.dumps do?<|im_end|>\n"
    "<|im_start|>assistant\nSerialize obj to a JSON formatted str.<|im_end|>\n"
    "<|im_start|>user\nAnd json.loads?<|im_end|>\n"
    "<|im_start|>assistant\nDeserialize s to a Python object.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def tokenizer():
    return chat.build_tokenizer()


def test_tokenizer_vocabulary_is_exact_and_deterministic(tokenizer, teacher_cache):
    assert len(tokenizer) == 8192 and tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True) == 8192
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>" and tokenizer.bos_token is None
    assert tokenizer.convert_tokens_to_ids(list(chat.SPECIAL_TOKENS)) == [0, 1, 2]
    assert tokenizer("x = 1").input_ids == tokenizer("x = 1", add_special_tokens=False).input_ids  # no BOS
    cached = list((teacher_cache / "tokenizers").glob("chatml-bpe-8192-*.json"))
    assert len(cached) == 1  # the test session's cache, never the user's
    assert chat.build_tokenizer().backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    # Training itself is deterministic: twice on a part of the corpus (the whole takes seconds a time).
    texts = [f.read_bytes() for f in corpus_files("train", max_files=150)]
    first, second = chat.train_chat_bpe(texts, 4096), chat.train_chat_bpe(texts, 4096)
    assert first == second and len(json.loads(first)["model"]["vocab"]) == 4096


def test_chat_template_renders_chatml_and_masks_assistant_tokens(tokenizer):
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == RENDERED
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == RENDERED.split("<|im_start|>assistant")[0] + "<|im_start|>assistant\n"

    enc = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert ids == tokenizer(RENDERED, add_special_tokens=False).input_ids and len(mask) == len(ids)
    spans, start = [], None  # the runs of 1s in the mask
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append(ids[start:i])
            start = None
    answers = [m["content"] + "<|im_end|>" for m in CONVERSATION if m["role"] == "assistant"]
    assert [tokenizer.decode(span) for span in spans] == answers
    assert [span[-1] for span in spans] == [tokenizer.convert_tokens_to_ids("<|im_end|>")] * 2


def test_unknown_role_raises(tokenizer):
    with pytest.raises(Exception, match="Unknown chat role tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "42"}], tokenize=False)


def test_chat_rows_are_deterministic_and_split(tmp_path):
    train, held_out = chat.chat_rows("train"), chat.chat_rows("eval")
    assert len(train) >= 300 and len(held_out) >= 20
    ids = [r["id"] for r in train + held_out]
    assert len(set(ids)) == len(ids)
    questions = {split: {r["messages"][-2]["content"] for r in rows} for split, rows in [("t", train), ("e", held_out)]}
    assert not questions["t"] & questions["e"]
    for row in train + held_out:
        roles = [m["role"] for m in row["messages"]]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"])
        assert 10 <= len(row["messages"][-1]["content"]) <= chat.MAX_ANSWER_CHARS + 4
    assert any(len(r["messages"]) == 3 for r in train)

    chat.write_jsonl(train, tmp_path / "train.jsonl")
    assert [json.loads(line) for line in (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()] == train
    # Another process, another hash seed: the same rows, byte for byte.
    code = "import json, sys; from trainer.builtin.stdlib.chat import chat_rows; print(json.dumps(chat_rows('eval')))"
    # (Compared between fresh processes, as make-data runs: inside a test session other libraries
    # have imported and patched stdlib modules, which can change what they hold.)
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("123", "456")
    ]
    assert outputs[0] == outputs[1] and json.loads(outputs[0])


def test_python_documentation_passages_split_by_topic_and_spread(tmp_path):
    """make-data's second domain: passages of pydoc_data.topics, whole topics held out, every
    passage a block at --seq-len 256; --docs-rows N keeps N spread over the topics, first and last."""
    from trainer.builtin.stdlib import docs

    train, held_out = docs.doc_rows("train"), docs.doc_rows("eval")
    assert len(train) > 200 and len(held_out) > 20
    assert not {r["topic"] for r in train} & {r["topic"] for r in held_out}
    assert all(docs.is_eval_topic(r["topic"]) for r in held_out)
    ids = [r["id"] for r in train + held_out]
    assert len(set(ids)) == len(ids)
    assert all(docs.MIN_PASSAGE_CHARS <= len(r["text"]) <= docs.MAX_PASSAGE_CHARS for r in train + held_out)
    few = docs.doc_rows("train", 5)
    assert len(few) == 5 and few[0] == train[0] and few[-1] == train[-1] and len({r["topic"] for r in few}) == 5

    subprocess.run(
        [sys.executable, "-m", "trainer.builtin.stdlib.chat", "make-data", "--out", str(tmp_path), "--docs-rows", "5"],
        check=True,
        capture_output=True,
    )
    written = [json.loads(line) for line in (tmp_path / "docs-train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert written == few and (tmp_path / "docs-eval.jsonl").is_file() and (tmp_path / "chat-train.jsonl").is_file()


def test_help_does_not_import_transformers():
    code = "import sys; from trainer.builtin.stdlib.chat import main; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    usage = subprocess.run(
        [sys.executable, "-m", "trainer.builtin.stdlib.chat", "--help"], capture_output=True, text=True, check=True
    )
    assert "make-teacher" in usage.stdout and "make-data" in usage.stdout


def test_make_teacher_saves_a_loadable_checkpoint(tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    figures = chat.make_teacher(tmp_path / "teacher", steps=3, max_files=3, batch_size=2, eval_blocks=4)
    assert figures["steps"] == 3 and figures["parameters"] > 5_000_000 and figures["vocab_size"] == 8192
    assert json.loads((tmp_path / "teacher" / "training.json").read_text()) == figures

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "teacher", local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 8192
    assert not model.config.tie_word_embeddings and model.config.eos_token_id == loaded.eos_token_id == 0
    assert len(loaded) == 8192 and loaded.chat_template == chat.CHAT_TEMPLATE
    assert loaded.apply_chat_template(CONVERSATION, tokenize=False) == RENDERED
    assert loaded(RENDERED).input_ids == tokenizer(RENDERED).input_ids
    prompt = loaded.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**prompt).logits
    assert logits.shape == (1, prompt["input_ids"].shape[1], 8192) and torch.isfinite(logits).all()
