"""The Hugging Face-native showcase: a chat tokenizer, a chat dataset and a Llama teacher, built
from nothing but what ships with Python.

    build_tokenizer()   byte-level BPE of exactly 8192 tokens (special tokens included) trained on
                        the stdlib train split, with ChatML (Qwen2-style) special tokens and chat
                        template; trained once, cached (LOGITSTORE_CACHE, else ~/.cache/logitstore)
    chat_rows(split)    "What does json.dumps do?" answered by the first paragraph of its docstring,
                        for the public functions and classes of ~50 pure-Python stdlib modules;
                        about 10% of them in "eval", by a hash of the qualified name
    make_teacher(out)   a 7M-parameter LlamaForCausalLM trained ~3 CPU minutes on the stdlib sources
                        (one batch in four of ChatML-formatted train rows), saved with save_pretrained
                        so AutoModelForCausalLM / AutoTokenizer load it like any Hub checkpoint

    python -m trainer.builtin.stdlib.chat make-teacher --out DIR [--steps N] [--seed S]
    python -m trainer.builtin.stdlib.chat make-data --out DIR [--docs-rows N] [--docs-eval-rows N]
        writes DIR/chat-{train,eval}.jsonl and DIR/docs-{train,eval}.jsonl (trainer.builtin.stdlib.docs)
The rows and the text are those of the running Python: another Python version gives other docstrings.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import math
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from logitstore.atomic import atomic_write_text
from trainer.builtin.stdlib.bpe import stdlib_bpe_json, train_bpe
from trainer.builtin.stdlib.corpus import corpus_files
from trainer.builtin.stdlib.docs import doc_rows

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 8192
EOS, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOS, IM_START, IM_END)
SEQ_LEN = 256  # training block length; the model accepts up to 512 positions
DEFAULT_STEPS = 300  # about 3 minutes on 2 CPU cores at batch 8 (~0.55 s a step)

# ChatML as Qwen2 writes it. The assistant's content and its <|im_end|> are inside {% generation %}, so
# return_assistant_tokens_mask marks exactly the tokens a student should learn to produce (the newline after
# <|im_end|> is not generated: decoding stops at <|im_end|>). transformers renders with trim_blocks and
# lstrip_blocks; the whitespace-stripping tags make the output independent of the newlines below.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}\n"
    "{{- raise_exception('Unknown chat role ' ~ message['role'] ~ ': expected system, user or assistant') -}}\n"
    "{%- endif -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
    "{%- if message['role'] == 'assistant' -%}\n"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}\n"
    "{%- else -%}\n"
    "{{- message['content'] + '<|im_end|>' -}}\n"
    "{%- endif -%}\n"
    "{{- '\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"
)

# Pure-Python (or C-with-docstrings) modules importable on every platform, without side effects.
CHAT_MODULES = (
    "abc", "argparse", "base64", "calendar", "codecs", "collections", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "email.utils", "enum", "filecmp", "fnmatch",
    "fractions", "functools", "glob", "graphlib", "gzip", "heapq", "hmac", "html", "inspect", "ipaddress",
    "itertools", "json", "linecache", "logging", "mimetypes", "numbers", "operator", "os.path", "pathlib",
    "pprint", "queue", "random", "re", "secrets", "shlex", "shutil", "statistics", "string", "tempfile",
    "textwrap", "threading", "timeit", "traceback", "types", "uuid", "warnings", "zipfile",
)  # fmt: skip
SYSTEM_PROMPT = "You are a concise assistant for the Python standard library."
MAX_ANSWER_CHARS = 400


# --- tokenizer ---------------------------------------------------------------------------------------------


def train_chat_bpe(texts: list[bytes], vocab_size: int) -> str:
    """Byte-level BPE like `bpe.train_bpe`, with the ChatML special tokens (ids 0-2) inside vocab_size."""
    return train_bpe(texts, vocab_size, SPECIAL_TOKENS)


def chat_tokenizer_json(vocab_size: int = VOCAB_SIZE) -> str:
    """The cached tokenizer.json of the chat BPE, trained first if absent."""
    return stdlib_bpe_json(vocab_size, SPECIAL_TOKENS, name="chatml-bpe")


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The chat tokenizer: Qwen2 conventions (EOS = pad = <|endoftext|>, no BOS), ChatML template."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=HFTokenizer.from_str(chat_tokenizer_json(vocab_size)),
        eos_token=EOS,
        pad_token=EOS,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE  # save_pretrained writes it beside the tokenizer
    if len(tokenizer) != vocab_size:  # the trainer stops early on a corpus too small to fill the vocabulary
        raise RuntimeError(f"the chat tokenizer has {len(tokenizer)} tokens, expected {vocab_size}")
    return tokenizer


# --- chat rows ---------------------------------------------------------------------------------------------


def _first_paragraph(doc: str, name: str) -> str:
    """The docstring's first paragraph, one line, at most MAX_ANSWER_CHARS; C signatures ("f(x) -> y") skipped."""
    paragraphs = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    if len(paragraphs) > 1 and re.match(rf"{re.escape(name)}\(.*\)", paragraphs[0]):
        paragraphs = paragraphs[1:]
    text = " ".join(paragraphs[0].split()) if paragraphs else ""
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    head = text[:MAX_ANSWER_CHARS]
    sentence = head.rfind(". ")
    if sentence >= MAX_ANSWER_CHARS // 4:  # a whole sentence, unless that leaves almost nothing
        return head[: sentence + 1]
    return head[: head.rfind(" ")].rstrip(",;:") + " ..."


def _documented(module: str) -> list[tuple[str, str]]:
    """(name, answer) of the module's public functions and classes defined there, with a docstring, by name."""
    mod = importlib.import_module(module)
    found = []
    for name in sorted(vars(mod)):
        obj = vars(mod)[name]
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) != mod.__name__:  # re-exported from elsewhere
            continue
        doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else ""
        answer = _first_paragraph(doc, name) if doc.strip() else ""
        # Signature-only (namedtuples, some C types) and auto-generated docstrings say nothing worth learning.
        if len(answer) >= 10 and not answer.startswith(f"{name}(") and answer != "An enumeration.":
            found.append((name, answer))
    return found


def chat_rows(split: str) -> list[dict]:
    """One question-and-answer conversation per documented public name; deterministic for a Python install."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown chat split {split!r} (expected train or eval)")
    rows = []
    position = 0
    for module in sorted(CHAT_MODULES):
        for name, answer in _documented(module):
            digest = hashlib.sha256(f"{module}.{name}".encode()).digest()
            if (digest[0] < 26) == (split == "eval"):
                messages = [
                    {"role": "user", "content": f"What does {module}.{name} do?"},
                    {"role": "assistant", "content": answer},
                ]
                if digest[1] < 64:  # a quarter of conversations open with a system turn
                    messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
                rows.append({"id": position, "messages": messages})
            position += 1
    return rows


def write_jsonl(rows: list[dict], path: str | os.PathLike) -> None:
    """One JSON object a line, written beside `path` and renamed over it: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- teacher -----------------------------------------------------------------------------------------------


def _token_blocks(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """The texts, each followed by <|endoftext|>, concatenated and cut into full SEQ_LEN blocks."""
    import torch

    from trainer.inputs.tokenizers import pack_blocks

    # The Rust tokenizer directly: the wrapper warns about every file longer than model_max_length.
    encoded = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    streams = [np.asarray(e.ids + [tokenizer.eos_token_id], dtype=np.int64) for e in encoded]
    ids, lengths = pack_blocks(streams, SEQ_LEN)
    return torch.from_numpy(ids[lengths == SEQ_LEN])  # the ragged tail is dropped, not padded


def _eval_blocks(tokenizer: PreTrainedTokenizerFast, count: int) -> torch.Tensor:
    """`count` blocks spread evenly over the corpus eval split: a fixed, cheap perplexity sample."""
    blocks = _token_blocks(tokenizer, [f.read_text(encoding="utf-8", errors="replace") for f in corpus_files("eval")])
    return blocks[np.linspace(0, len(blocks) - 1, min(count, len(blocks))).round().astype(int)]


def _perplexity(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int = 16) -> float:
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size]
            total += float(model(input_ids=batch, labels=batch).loss) * len(batch)  # equal-length blocks
    return math.exp(total / len(blocks))


def _chat_eval(tokenizer: PreTrainedTokenizerFast, batch_size: int = 16) -> list[dict[str, torch.Tensor]]:
    """The chat eval rows as right-padded batches whose labels are the assistant tokens alone."""
    import torch

    encoded = [
        tokenizer.apply_chat_template(row["messages"], return_dict=True, return_assistant_tokens_mask=True)
        for row in chat_rows("eval")
    ]
    batches = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            attention[i, :n] = 1
            labels[i, :n] = ids[i, :n].masked_fill(torch.tensor(r["assistant_masks"]) == 0, -100)
        batches.append({"input_ids": ids, "attention_mask": attention, "labels": labels})
    return batches


def _chat_perplexity(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Per-token perplexity of the assistant answers given their questions."""
    import torch

    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for batch in batches:
            n = int((batch["labels"][:, 1:] != -100).sum())  # the model scores label t+1 from tokens up to t
            total += float(model(**batch).loss) * n
            count += n
    return math.exp(total / count)


def _llama(tokenizer: PreTrainedTokenizerFast):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,  # None: Qwen2 conventions, no BOS
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    # generate() on a chat prompt should stop at the end of the assistant's turn, as Qwen2-Instruct's does.
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _train(
    model: torch.nn.Module,
    code: torch.Tensor,
    chat: torch.Tensor,
    steps: int,
    seed: int,
    batch_size: int,
    lr: float,
    chat_every: int,
) -> None:
    """AdamW, linear warmup then cosine decay to lr/10; every `chat_every`-th batch is ChatML rows (0: never)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    rng = np.random.default_rng(seed)  # the batches are a function of the seed alone
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        source = chat if chat_every and step % chat_every == chat_every - 1 and len(chat) else code
        batch = source[torch.from_numpy(rng.integers(0, len(source), size=batch_size))]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 20 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)


def make_teacher(
    out: str | os.PathLike,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    *,
    max_files: int | None = None,
    batch_size: int = 8,
    lr: float = 1e-3,
    chat_every: int = 4,
    eval_blocks: int = 64,
) -> dict:
    """Train the Llama teacher on the stdlib train split (`max_files`: its first files only) and save it to
    `out` with its tokenizer, loadable by AutoModelForCausalLM / AutoTokenizer; -> figures, also out/training.json.
    """
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    out = Path(out)
    started = time.perf_counter()
    tokenizer = build_tokenizer(VOCAB_SIZE)
    tokenizer_seconds = time.perf_counter() - started
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in corpus_files("train", max_files)]
    code = _token_blocks(tokenizer, texts)
    chat = _token_blocks(
        tokenizer, [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in chat_rows("train")]
    )
    held_out, chat_eval = _eval_blocks(tokenizer, eval_blocks), _chat_eval(tokenizer)
    torch.manual_seed(seed)
    model = _llama(tokenizer)
    before = _perplexity(model, held_out), _chat_perplexity(model, chat_eval)
    train_start = time.perf_counter()
    _train(model, code, chat, steps, seed, batch_size, lr, chat_every)
    seconds = time.perf_counter() - train_start
    after = _perplexity(model, held_out), _chat_perplexity(model, chat_eval)
    figures = {
        "steps": steps,
        "seed": seed,
        "seconds": round(seconds, 1),
        "tokenizer_seconds": round(tokenizer_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "batch_size": batch_size,
        "seq_len": SEQ_LEN,
        "lr": lr,
        "chat_every": chat_every,
        "train_files": len(texts),
        "train_blocks": {"code": len(code), "chat": len(chat)},
        "eval_blocks": len(held_out),
        "perplexity_before": round(before[0], 2),
        "perplexity_after": round(after[0], 2),
        "chat_eval_rows": sum(len(b["input_ids"]) for b in chat_eval),
        "chat_answer_perplexity_before": round(before[1], 2),
        "chat_answer_perplexity_after": round(after[1], 2),
    }
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    atomic_write_text(out / "training.json", json.dumps(figures, indent=2) + "\n")
    return figures


# --- command line ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.builtin.stdlib.chat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    teacher = sub.add_parser("make-teacher", help="train the Llama teacher and save it with its tokenizer")
    teacher.add_argument("--out", type=Path, required=True, help="the directory to save_pretrained into")
    teacher.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    teacher.add_argument("--seed", type=int, default=0)
    data = sub.add_parser(
        "make-data", help="write DIR/chat-{train,eval}.jsonl and Python's documentation as DIR/docs-{train,eval}.jsonl"
    )
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--docs-rows", type=int, default=0, help="train passages, spread over the topics (0: all)")
    data.add_argument("--docs-eval-rows", type=int, default=0, help="held-out passages (0: all)")
    args = parser.parse_args(argv)
    if args.command == "make-teacher":
        figures = make_teacher(args.out, steps=args.steps, seed=args.seed)
        print(
            f"teacher saved to {args.out}: {figures['steps']} steps in {figures['seconds']:.0f} s; eval perplexity "
            f"{figures['perplexity_before']:.0f} -> {figures['perplexity_after']:.1f}, chat answers "
            f"{figures['chat_answer_perplexity_before']:.0f} -> {figures['chat_answer_perplexity_after']:.1f}"
        )
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        for split in ("train", "eval"):
            rows = chat_rows(split)
            write_jsonl(rows, args.out / f"chat-{split}.jsonl")
            print(f"{split}: {len(rows)} rows -> {args.out / f'chat-{split}.jsonl'}")
        for split, limit in (("train", args.docs_rows), ("eval", args.docs_eval_rows)):
            rows = doc_rows(split, limit)
            write_jsonl(rows, args.out / f"docs-{split}.jsonl")
            print(f"{split}: {len(rows)} passages of Python's documentation -> {args.out / f'docs-{split}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
