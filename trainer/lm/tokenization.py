"""Tokenizers and block packing for the language-model path."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to train, nothing to save."""

    name = "bytes"
    vocab_size = 256

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def decode(self, ids: np.ndarray) -> bytes:
        return np.asarray(ids, dtype=np.uint8).tobytes()


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


def corpus_blocks(files: list[Path], tokenizer: ByteTokenizer, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    return pack_blocks([tokenizer.encode(f.read_bytes()) for f in files], seq_len)
