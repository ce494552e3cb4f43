"""Write golden stores of tests/data/golden/: one small store per format version and layout, from
one table (GOLDEN below: each store's data, flags and where it is dumped).

    python -m scripts.make_golden OUT_DIR [NAME ...]     # every store of the table, or these

Each store is pinned ONCE, by the code of the version that introduced it (the table says at which
commit); never regenerate one to make a failing test pass: their point is that today's reader
reads what an older writer wrote, bit for bit. A new format version adds its rows here, is dumped
with the code that introduces it, and its stores and `<name>.expected.json` are committed.

Every store is dumped through the command line (`python -m jobs.dump_logits`), the one interface
that stays the same across versions, from small deterministic teachers and data made here: the
digits CNN over digits-eval, tiny random GPTs over rows of token ids, a tiny random Llama with a
ChatML tokenizer (tests/helpers.py) over chat rows and text. A store "on s3" is dumped to moto's S3
server (started here, on 127.0.0.1) and copied object by object to OUT_DIR/<name>/: a local copy of
a store on object storage is a valid store. `<name>.expected.json` records the manifest's summary
and, per shard, the dtype, shape and sha256 of every array the reader returned.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Golden:
    version: int
    data: str  # digits | tokens | wide-tokens | chat | text | wide-chat | wide-text: what the teacher reads
    flags: tuple[str, ...]  # the dump's flags beyond the data's own
    on_s3: bool = False  # dumped to object storage, then copied to disk

    @property
    def commit(self) -> str:
        """The commit whose code pinned it (written at 3d11b59, committed at 60d80bf, for versions 1-4)."""
        return PINNED_AT[self.version]


PINNED_AT = {
    1: "3d11b59",
    2: "3d11b59",
    3: "3d11b59",
    4: "3d11b59",
    5: "feb5c00",
    6: "4782fb7",
    7: "c8d9a2a",
    8: "de3376a",
    9: "c64c4c8",
}
DIGITS = ("--top-k", "3", "--shard-size", "128")
TOKENS = ("--seq-len", "24", "--shard-size", "5")
LLAMA = ("--shard-size", "3")
ADAPTIVE = ("--top-k", "8", "--top-p", "0.7", "--min-k", "2")
LOGQ = ("--index-codec", "delta", "--value-codec", "logq")
VIEWS = ("--views", "2", "--augment", "digits-shift-rotate", "--seed", "5")
SAMPLE = ("--selection", "sample", "--draws", "8", "--seed", "3")
HYBRID = ("--selection", "hybrid", "--draws", "6", "--sample-temperature", "2")
HYBRID12 = ("--selection", "hybrid", "--draws", "5", "--value-codec", "logq", "--value-bits", "12")
WIDE = ("--seq-len", "24", "--shard-size", "7", "--top-k", "3")
ZARR, ARROW = ("--format", "zarr"), ("--format", "arrow")
GOLDEN = {
    "v1-digits-zarr": Golden(1, "digits", (*DIGITS, *ZARR)),
    "v1-digits-arrow": Golden(1, "digits", (*DIGITS, *ARROW)),
    "v1-tokens-zarr": Golden(1, "tokens", (*TOKENS, "--top-k", "4", *ZARR)),
    "v1-tokens-uint32-arrow": Golden(1, "wide-tokens", (*WIDE, *ARROW)),
    "v2-sample-zarr": Golden(2, "tokens", (*TOKENS, "--top-k", "1", *SAMPLE, *ZARR)),
    "v2-hybrid-arrow": Golden(2, "tokens", (*TOKENS, "--top-k", "2", *HYBRID, *ARROW)),
    "v3-delta-logq8-zarr": Golden(3, "tokens", (*TOKENS, "--top-k", "8", *LOGQ, *ZARR)),
    "v3-delta-logq8-arrow": Golden(3, "tokens", (*TOKENS, "--top-k", "8", *LOGQ, *ARROW)),
    "v3-hybrid-plain-logq12-zarr": Golden(3, "tokens", (*TOKENS, "--top-k", "3", *HYBRID12, *ZARR)),
    "v3-delta-float32-arrow": Golden(3, "tokens", (*TOKENS, "--top-k", "5", "--index-codec", "delta", *ARROW)),
    "v4-views-zarr": Golden(4, "digits", (*DIGITS, *VIEWS, *ZARR)),
    "v4-views-arrow": Golden(4, "digits", (*DIGITS, *VIEWS, *ARROW)),
    "v5-chat-delta-logq8-zarr": Golden(5, "chat", (*LLAMA, "--top-k", "4", *LOGQ)),
    "v5-text-arrow": Golden(5, "text", (*LLAMA, "--top-k", "4", *ARROW, "--seq-len", "16")),
    "v6-adaptive-chat-delta-logq8-arrow": Golden(6, "wide-chat", (*LLAMA, *ADAPTIVE, *ARROW, *LOGQ)),
    "v6-adaptive-text-zarr": Golden(6, "wide-text", (*LLAMA, *ADAPTIVE, "--seq-len", "16")),
    "v7-s3-chat-delta-logq8-arrow": Golden(7, "chat", (*LLAMA, "--top-k", "4", *ARROW, *LOGQ), on_s3=True),
    "v7-s3-text-zarr": Golden(7, "text", (*LLAMA, "--top-k", "4", "--seq-len", "16"), on_s3=True),
    "v8-s3-chat-zarr-zip": Golden(8, "chat", (*LLAMA, "--top-k", "4", *ZARR, "--index-codec", "delta"), on_s3=True),
    "v9-features-digits-zarr": Golden(9, "digits", (*DIGITS, "--hidden-layers", "3,2", "--hidden-dim", "4", *ZARR)),
    "v9-features-chat-arrow": Golden(
        9, "chat", (*LLAMA, "--top-k", "4", "--hidden-layers", "1,0", "--hidden-dim", "4", *ARROW, *LOGQ)
    ),
}

# The tiny random GPTs of the token stores (the teacher code of 3d11b59 lived in trainer.lm.gpt).
GPTS = """
    import torch
    from trainer.builtin.stdlib.gpt import GPT, GPTConfig

    def tiny_gpt():
        torch.manual_seed(11)
        return GPT(GPTConfig(vocab_size=300, seq_len=24, width=16, depth=1, heads=2))

    def wide_gpt():
        torch.manual_seed(12)
        return GPT(GPTConfig(vocab_size=70_000, seq_len=24, width=8, depth=1, heads=2))
"""
CHAT = [
    {
        "messages": [
            {"role": "user", "content": f"What does json.{name} do?"},
            {"role": "assistant", "content": f"It handles JSON, case {i}."},
        ]
    }
    for i, name in enumerate(["dumps", "loads", "dump", "load", "JSONDecoder"])
]
TEXT = [{"id": 40 + i, "text": f"def f(x):\n    return x * {i}\n" * (i + 1)} for i in range(6)]


def make_work(work: Path) -> dict[str, list[str]]:
    """The teachers and data of every kind of golden store in `work`; -> each kind's teacher and
    dataset flags."""
    from tests.helpers import tiny_chat_tokenizer, tiny_llama, write_jsonl

    (work / "golden_models.py").write_text(textwrap.dedent(GPTS))
    (work / "tokens").mkdir()
    rng = np.random.default_rng(2024)  # 18 rows of 1..24 token ids (ids 1000 + 7i, unsorted in the file)
    lengths = [24, 1, 17, 24, 3, 24, 9, 24, 24, 12, 2, 24, 20, 24, 5, 24, 24, 11]
    rows = [rng.integers(0, 300, size=n).tolist() for n in lengths]
    ids = (1000 + 7 * np.arange(len(rows)))[rng.permutation(len(rows))]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ids, "input_ids": rows}), work / "tokens" / "part-0.parquet")
    for name, init_std in (("llama", 0.02), ("wide-llama", 1.0)):  # a wide init: adaptive heads differ
        tok = tiny_chat_tokenizer(work / name)
        tiny_llama(work / name, len(tok), max_positions=64, init_std=init_std)
    write_jsonl(work / "chat.jsonl", CHAT)
    write_jsonl(work / "text.jsonl", TEXT)
    llama, wide = f"hf:{work / 'llama'}", f"hf:{work / 'wide-llama'}"
    return {
        "digits": ["--teacher", "digits-cnn", "--dataset", "digits-eval"],
        "tokens": ["--teacher", "golden_models:tiny_gpt", "--dataset", "tokens"],
        "wide-tokens": ["--teacher", "golden_models:wide_gpt", "--dataset", "tokens"],
        "chat": ["--teacher", llama, "--dataset", "chat.jsonl"],
        "text": ["--teacher", llama, "--dataset", "text.jsonl"],
        "wide-chat": ["--teacher", wide, "--dataset", "chat.jsonl"],
        "wide-text": ["--teacher", wide, "--dataset", "text.jsonl"],
    }


def array_digest(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def expected(store: Path) -> dict:
    """What the reader returns of `store`: the manifest's summary and every array of every shard."""
    from logitstore import StoreReader

    reader = StoreReader(store)
    m = reader.manifest
    summary = {k: getattr(m, k) for k in ("format_version", "backend", "top_k", "vocab_size")}
    summary |= {"num_samples": m.num_samples, "num_positions": m.num_positions}
    shards = [
        {name: array_digest(a) for name, a in reader.read_shard(i).arrays().items()} for i in range(reader.num_shards)
    ]
    projection = reader.feature_projection()  # version 9: the features' projection matrices
    extra = {} if projection is None else {"feature_projection": [array_digest(p) for p in projection]}
    return {**summary, "shards": shards, **extra}


def dump(name: str, golden: Golden, sources: dict[str, list[str]], out: Path, work: Path) -> None:
    """One golden store through the CLI, to disk or to the S3 server (then copied object by object),
    with its expected.json beside it."""
    from logitstore.storage import open_storage

    store = out / name
    shutil.rmtree(store, ignore_errors=True)
    target = f"s3://golden/{name}" if golden.on_s3 else str(store)
    cmd = [sys.executable, "-m", "jobs.dump_logits", *sources[golden.data], *golden.flags, "--out", target]
    subprocess.run([*cmd, "--threads-per-worker", "1"], cwd=work, check=True, stdout=subprocess.DEVNULL)
    if golden.on_s3:
        location = open_storage(target)
        location.download_many({key: store / key for key in location.list()})
    for leftover in (".lock", ".tmp"):  # the writer's, not the store's
        open_storage(store).delete_tree(leftover)
    (out / f"{name}.expected.json").write_text(json.dumps(expected(store), indent=1) + "\n")
    version = json.loads((store / "manifest.json").read_text())["format_version"]
    print(f"{name}: format v{version} (the table's pinned one was written by {golden.commit}'s code)")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out, names = Path(args[0]).resolve(), args[1:] or list(GOLDEN)
    unknown = [n for n in names if n not in GOLDEN]
    if unknown:
        raise SystemExit(f"unknown golden stores {unknown}: the table holds {', '.join(GOLDEN)}")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="golden-"))
    sources = make_work(work)
    if any(GOLDEN[n].on_s3 for n in names):
        from scripts.kill_resume import start_s3_server

        start_s3_server("s3://golden")
    for name in names:
        dump(name, GOLDEN[name], sources, out, work)
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
