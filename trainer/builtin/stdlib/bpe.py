"""The `bpe:N` tokenizers: byte-level BPE (GPT-2 style, no special tokens) of vocabulary N,
trained with the `tokenizers` package on the whole stdlib train split; deterministic (two runs
give identical JSON), trained once and cached under cache_dir()/tokenizers."""

from __future__ import annotations

from logitstore.atomic import atomic_write_text
from trainer.builtin.cache import cache_dir
from trainer.builtin.stdlib.corpus import corpus_files, corpus_fingerprint


def train_bpe(texts: list[bytes], vocab_size: int, special_tokens: tuple[str, ...] = ()) -> str:
    """Byte-level BPE (GPT-2 style) trained on `texts`, `special_tokens` first (ids 0, 1, ...) and
    inside `vocab_size`; deterministic."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(special_tokens),
        show_progress=False,
    )
    tok.train_from_iterator([t.decode("utf-8", errors="replace") for t in texts], trainer=trainer)
    return tok.to_str()


def stdlib_bpe_json(vocab_size: int, special_tokens: tuple[str, ...] = (), name: str = "bpe") -> str:
    """The cached tokenizer.json of `bpe:<vocab_size>` (or of another `name` with `special_tokens`),
    trained on the stdlib train split first if absent."""
    files = corpus_files("train")
    path = cache_dir() / "tokenizers" / f"{name}-{vocab_size}-{corpus_fingerprint(files)[:16]}.json"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    text = train_bpe([f.read_bytes() for f in files], vocab_size, special_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)  # a temporary name of its own: concurrent jobs never read or clobber half a file
    return text
