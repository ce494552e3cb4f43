"""Tokenizers and block packing for the language-model path.

A tokenizer spec (`--tokenizer`) is one of:
  - `bytes`: UTF-8 bytes, vocabulary 256, nothing to train or save;
  - `bpe:N`: byte-level BPE of vocabulary N, trained with the `tokenizers` package on the whole
    stdlib train split (deterministic; cached under cache_dir()/tokenizers);
  - a path to a `tokenizer.json` (the `tokenizers` format), e.g. the one saved in another store.
A store dumped from text keeps its BPE tokenizer as `tokenizer.json`, so the trainer tokenises
with exactly the same one.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

BPE_SPEC = re.compile(r"^bpe:(\d+)$")
MIN_BPE_VOCAB = 257  # 256 byte symbols plus at least one merge
MAX_VOCAB = 2**32 - 1


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


def check_tokenizer_spec(spec: str, flag: str = "--tokenizer") -> list[str]:
    if spec == "bytes":
        return []
    match = BPE_SPEC.match(spec)
    if match:
        n = int(match.group(1))
        if not MIN_BPE_VOCAB <= n <= 1_000_000:
            return [f"{flag} {spec}: the BPE vocabulary must be in {MIN_BPE_VOCAB}..1000000"]
        return []
    path = Path(spec)
    if spec.startswith("bpe"):
        return [f"{flag} {spec!r} is not a BPE spec: write bpe:N with N the vocabulary size, e.g. bpe:8192"]
    if not path.is_file():
        return [f"{flag} {spec!r} is neither bytes, bpe:N nor an existing tokenizer.json file"]
    try:
        BPETokenizer(path.read_text(encoding="utf-8"))
    except Exception as exc:  # the tokenizers package raises its own Exception subclass
        return [f"{flag} {spec}: not a valid tokenizer.json ({str(exc).splitlines()[0][:120]}): pass a file saved by the tokenizers package"]
    return []


def train_bpe(texts: list[bytes], vocab_size: int) -> BPETokenizer:
    """Byte-level BPE (GPT-2 style, no special tokens) trained on `texts`; deterministic."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator([t.decode("utf-8", errors="replace") for t in texts], trainer=trainer)
    return BPETokenizer(tok.to_str())


def resolve_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer a spec names; `bpe:N` is trained on the stdlib train split once and cached."""
    if spec == "bytes":
        return ByteTokenizer()
    match = BPE_SPEC.match(spec)
    if not match:
        return BPETokenizer(Path(spec).read_text(encoding="utf-8"))
    from trainer.cache import cache_dir
    from trainer.lm.corpus import corpus_files, corpus_fingerprint

    files = corpus_files("train")
    path = cache_dir() / "tokenizers" / f"bpe-{match.group(1)}-{corpus_fingerprint(files)[:16]}.json"
    if path.is_file():
        return BPETokenizer(path.read_text(encoding="utf-8"))
    tok = train_bpe([f.read_bytes() for f in files], int(match.group(1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tok.to_json(), encoding="utf-8")
    tmp.replace(path)  # atomic: concurrent jobs never read half a file
    return tok


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
    streams = tokenizer.encode_many(texts) if isinstance(tokenizer, BPETokenizer) else [tokenizer.encode(t) for t in texts]
    return pack_blocks(streams, seq_len)
