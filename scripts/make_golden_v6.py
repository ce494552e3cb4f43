"""Write the version-6 golden stores of tests/data/golden/ (adaptive top-k).

    python -m scripts.make_golden_v6 OUT_DIR

Run ONCE, by the code that introduced format version 6 (the stores in tests/data/golden were
written by this script at the commit that added it); never regenerate them to make a failing test
pass. As scripts/make_golden_v5.py (whose data, teacher and `expected` it reuses), every store is
dumped through the command line: the tiny random Llama (initialised wide, so its heads differ)
over chat rows (completion mask; arrow, delta/logq codec) and over plain text (every token; zarr,
plain float32), each holding per position the fewest of at most 8 classes with mass --top-p at T = 1.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.make_golden_stores import pin
from scripts.make_golden_v5 import CHAT, TEXT, expected

ADAPTIVE = ["--top-k", "8", "--top-p", "0.7", "--min-k", "2"]
STORES = {
    "v6-adaptive-chat-delta-logq8-arrow": [
        "--dataset", "chat.jsonl", "--format", "arrow", "--index-codec", "delta", "--value-codec", "logq",
    ],
    "v6-adaptive-text-zarr": ["--dataset", "text.jsonl", "--seq-len", "16"],
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from tests.helpers import tiny_chat_tokenizer, tiny_llama, write_jsonl

    out = Path((argv or sys.argv[1:])[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="golden-v6-"))
    tok = tiny_chat_tokenizer(work / "teacher")
    tiny_llama(work / "teacher", len(tok), max_positions=64, init_std=1.0)  # peaked: heads differ
    write_jsonl(work / "chat.jsonl", CHAT)
    write_jsonl(work / "text.jsonl", TEXT)
    common = ["--teacher", f"hf:{work / 'teacher'}", "--shard-size", "3", "--threads-per-worker", "1", *ADAPTIVE]
    for name, args in STORES.items():
        store = out / name
        shutil.rmtree(store, ignore_errors=True)
        cmd = [sys.executable, "-m", "jobs.dump_logits", *common, *args, "--out", str(store)]
        subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
        pin(store, expected(store))
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
