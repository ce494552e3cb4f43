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

import sys
from pathlib import Path

from scripts.make_golden_v5 import write_stores

ADAPTIVE = ["--top-k", "8", "--top-p", "0.7", "--min-k", "2"]
STORES = {
    "v6-adaptive-chat-delta-logq8-arrow": [
        "--dataset", "chat.jsonl", "--format", "arrow", "--index-codec", "delta", "--value-codec", "logq",
    ],
    "v6-adaptive-text-zarr": ["--dataset", "text.jsonl", "--seq-len", "16"],
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    write_stores(Path((argv or sys.argv[1:])[0]), STORES, ADAPTIVE, init_std=1.0)  # wide init: heads differ
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
