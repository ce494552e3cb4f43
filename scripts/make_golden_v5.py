"""Write the version-5 golden stores of tests/data/golden/ (stores that carry their inputs).

    python -m scripts.make_golden_v5 OUT_DIR

Run ONCE, by the code that introduced format version 5 (the stores in tests/data/golden were
written by this script at the commit that added it); never regenerate them to make a failing test
pass. Like scripts/make_golden_stores.py (versions 1 to 4, whose `expected` it reuses), every
store is dumped through the command line: a tiny random Llama with a ChatML tokenizer (from
tests/helpers.py) over chat rows (completion mask; zarr, delta/logq codec) and over plain text
(every token; arrow, plain codec).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.make_golden_stores import array_digest, pin

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
STORES = {
    "v5-chat-delta-logq8-zarr": ["--dataset", "chat.jsonl", "--index-codec", "delta", "--value-codec", "logq"],
    "v5-text-arrow": ["--dataset", "text.jsonl", "--format", "arrow", "--seq-len", "16"],
}


def expected(store: Path) -> dict:
    from logitstore import StoreReader

    reader = StoreReader(store)
    m = reader.manifest
    return {
        "format_version": m.format_version,
        "backend": m.backend,
        "top_k": m.top_k,
        "vocab_size": m.vocab_size,
        "num_samples": m.num_samples,
        "num_positions": m.num_positions,
        "shards": [
            {name: array_digest(a) for name, a in reader.read_shard(i).arrays().items()}
            for i in range(reader.num_shards)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    write_stores(Path((argv or sys.argv[1:])[0]), STORES, ["--top-k", "4"])
    return 0


def write_stores(out: Path, stores: dict[str, list[str]], selection: list[str], init_std: float = 0.02) -> None:
    """Dump each of `stores` (name -> its flags) with the `selection` flags through the CLI, from the
    tiny random Llama over CHAT and TEXT, into `out`, and pin what the reader returns."""
    from tests.helpers import tiny_chat_tokenizer, tiny_llama, write_jsonl

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="golden-"))
    tok = tiny_chat_tokenizer(work / "teacher")
    tiny_llama(work / "teacher", len(tok), max_positions=64, init_std=init_std)
    write_jsonl(work / "chat.jsonl", CHAT)
    write_jsonl(work / "text.jsonl", TEXT)
    common = ["--teacher", f"hf:{work / 'teacher'}", *selection, "--shard-size", "3", "--threads-per-worker", "1"]
    for name, args in stores.items():
        store = out / name
        shutil.rmtree(store, ignore_errors=True)
        cmd = [sys.executable, "-m", "jobs.dump_logits", *common, *args, "--out", str(store)]
        subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
        pin(store, expected(store))
    shutil.rmtree(work)


if __name__ == "__main__":
    raise SystemExit(main())
