"""Tokenizers and block packing for text.

A tokenizer spec (`--tokenizer`) is one of:
  - `bytes`: UTF-8 bytes, vocabulary 256, nothing to train or save;
  - `bpe:N`: the built-in byte-level BPE of vocabulary N (trainer/builtin/stdlib/bpe.py);
  - a path to a `tokenizer.json` (the `tokenizers` format), e.g. the one saved in another store.
A store dumped from text keeps its BPE tokenizer as `tokenizer.json`, so the trainer tokenises
with exactly the same one. `tokenizers` (Hugging Face's Rust library) does the BPE work: fast,
byte-exact with what other tools load, and far better tested than a tokenizer of our own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from trainer.inputs import registry


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256."""

    kind = "bytes"
    vocab_size = 256

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def decode(self, ids: np.ndarray) -> bytes:
        return np.asarray(ids, dtype=np.uint8).tobytes()

    def to_json(self) -> str | None:
        return None


class BPETokenizer:
    """A `tokenizers.Tokenizer` (byte-level BPE, or any the user saved) behind the same two methods."""

    kind = "bpe"

    def __init__(self, json_text: str) -> None:
        from tokenizers import Tokenizer

        self._json = json_text
        self._tok = Tokenizer.from_str(json_text)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, data: bytes) -> np.ndarray:
        # Invalid UTF-8 is replaced rather than failing a whole corpus on one odd file.
        return np.asarray(self._tok.encode(data.decode("utf-8", errors="replace")).ids, dtype=np.int64)

    def encode_many(self, texts: list[bytes]) -> list[np.ndarray]:
        encoded = self._tok.encode_batch([t.decode("utf-8", errors="replace") for t in texts])
        return [np.asarray(e.ids, dtype=np.int64) for e in encoded]

    def decode(self, ids: np.ndarray) -> bytes:
        return self._tok.decode([int(i) for i in ids]).encode("utf-8")

    def to_json(self) -> str:
        return self._json


Tokenizer = ByteTokenizer | BPETokenizer


def tokenizer_from_json(json_text: str | None) -> Tokenizer:
    """The tokenizer a store or a task was given: None means bytes."""
    return ByteTokenizer() if json_text is None else BPETokenizer(json_text)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resolve_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer a spec names: bytes, bpe:N (the built-in stdlib BPE, trained once, cached) or a file."""
    if spec == "bytes":
        return ByteTokenizer()
    match = registry.BPE_SPEC.match(spec)
    if match:
        return BPETokenizer(registry.bpe_tokenizer_json(int(match.group(1))))
    return BPETokenizer(Path(spec).read_text(encoding="utf-8"))


def pack_blocks(streams: list[np.ndarray], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate token streams and cut them into blocks of `seq_len`.

    -> (input_ids int64 [N, seq_len], zero-padded after `length`; length int64 [N], 1..seq_len).
    Only the last block can be shorter; its padding is masked out and never stored.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    tokens = np.concatenate(streams) if streams else np.zeros(0, dtype=np.int64)
    n = -(-tokens.shape[0] // seq_len)
    padded = np.zeros(n * seq_len, dtype=np.int64)
    padded[: tokens.shape[0]] = tokens
    lengths = np.full(n, seq_len, dtype=np.int64)
    if n and tokens.shape[0] % seq_len:
        lengths[-1] = tokens.shape[0] % seq_len
    return padded.reshape(n, seq_len), lengths


def corpus_blocks(files: list[Path], tokenizer: Tokenizer, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    texts = [f.read_bytes() for f in files]
    streams = (
        tokenizer.encode_many(texts) if isinstance(tokenizer, BPETokenizer) else [tokenizer.encode(t) for t in texts]
    )
    return pack_blocks(streams, seq_len)
