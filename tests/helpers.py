"""Helpers the tests share (tests never import each other; the fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from logitstore import StoreReader


def tree_digest(path: str | Path) -> str:
    """Hash of every file's path and bytes under `path`: equal before and after means nothing changed."""
    digest = hashlib.sha256()
    root = Path(path)
    for f in sorted(
        p for p in root.rglob("*") if p.is_file() and p.name != ".lock"
    ):  # the lock records its last holder
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def run(main, argv, capsys) -> tuple[int, list[str]]:
    """A job's exit code and its `error:` lines."""
    code = main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("error:")]


def same_content(a: str | Path, b: str | Path) -> bool:
    """Two stores decode to the same arrays, shard by shard."""
    x, y = StoreReader(a), StoreReader(b)
    return x.num_shards == y.num_shards and all(p.equals(q) for (_, p), (_, q) in zip(x.iter_shards(), y.iter_shards()))


def all_shards(store: str) -> list:
    return [data for _, data in StoreReader(store).iter_shards()]


def token_parquet(path, rows, ids=None) -> str:
    """A Parquet file of token rows (`input_ids`, optional `id`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = {"input_ids": pa.array([list(map(int, r)) for r in rows], type=pa.list_(pa.int64()))}
    if ids is not None:
        table["id"] = pa.array(ids, type=pa.int64())
    pq.write_table(pa.table(table), path)
    return str(path)


def most_common_shard_share(shards: np.ndarray) -> float:
    """The share of a batch's rows that come from its most common store shard."""
    return float(np.bincount(shards).max() / len(shards))


def random_order_share(shard_of_sample: np.ndarray, batch_size: int, epochs: int, seed: int = 0) -> float:
    """The mean most-common-shard share of batches cut from uniformly random permutations: the baseline."""
    rng = np.random.default_rng(seed)
    shares = []
    for _ in range(epochs):
        order = rng.permutation(len(shard_of_sample))
        shares += [
            most_common_shard_share(shard_of_sample[order[s : s + batch_size]])
            for s in range(0, len(order), batch_size)
        ]
    return float(np.mean(shares))


def tiny_llama(path, vocab_size: int, max_positions: int = 64, seed: int = 0, init_std: float = 0.02) -> str:
    """A randomly initialised Llama saved with save_pretrained; returns its `hf:` spec. A larger
    `init_std` gives peaked next-token distributions (the default's are nearly uniform)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return f"hf:{path}"


CHATML = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_chat_tokenizer(path, template: str | None = CHATML, vocab_size: int = 300):
    """A byte-level BPE with ChatML special tokens trained on a stdlib module's source, saved with
    save_pretrained at `path` (with `template` as its chat template, or none)."""
    import inspect
    import json as json_module

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from trainer.builtin.stdlib.bpe import train_bpe

    source = inspect.getsource(json_module.decoder).encode()
    tok = Tokenizer.from_str(train_bpe([source], vocab_size, ("<|endoftext|>", "<|im_start|>", "<|im_end|>")))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if template is not None:
        hf.chat_template = template
    hf.save_pretrained(path)
    return hf


def write_jsonl(path, rows) -> str:
    import json as json_module

    Path(path).write_text("".join(json_module.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def wandb_history(run_dir: str | Path) -> list[dict]:
    """The history rows of the one offline W&B run under `run_dir` (logs/wandb/offline-run-*/run-*.wandb),
    read back from its record log: a 7-byte header, then 32 KiB blocks of records, each a 7-byte
    header (crc32, uint16 length, type: 1 whole, 2 first, 3 middle, 4 last piece) and a protobuf Record."""
    import json

    from wandb.proto import wandb_internal_pb2

    (path,) = Path(run_dir).glob("logs/wandb/offline-run-*/run-*.wandb")
    data, pos, pieces, rows = path.read_bytes(), 7, b"", []
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        pieces, pos = pieces + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
