"""Write the golden stores of tests/data/golden/: one small store per format version and layout.

    python -m scripts.make_golden_stores OUT_DIR

Run ONCE, by the code of the version whose stores are to be pinned (the stores in tests/data/golden
were written at commit 3d11b59, before the layout of issue 12, by running this script from a
checkout of that commit). Never regenerate them to make a failing test pass: their point is that
today's reader reads what an older writer wrote, bit for bit.

This script imports that commit's modules (trainer.lm.gpt for the test teachers), so it runs only
from a checkout of it; it is kept as the record of how the stores were made.

Every store is dumped through the command line (`python -m jobs.dump_logits`), the one interface
that stays the same across versions. For each, `expected.json` records the manifest's summary and,
per shard, the dtype, shape and sha256 of every array the reader returned then.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

# Arrays a reader returns, by name (each shard returns a subset).
ARRAY_NAMES = (
    "sample_id",
    "position_offsets",
    "topk_index",
    "topk_logit",
    "logsumexp",
    "sample_index",
    "sample_count",
    "rest_mass",
    "view_seed",
)

TEACHERS = """
    import torch
    from trainer.lm.gpt import GPT, GPTConfig

    def tiny_gpt():
        torch.manual_seed(11)
        return GPT(GPTConfig(vocab_size=300, seq_len=24, width=16, depth=1, heads=2))

    def wide_gpt():
        torch.manual_seed(12)
        return GPT(GPTConfig(vocab_size=70_000, seq_len=24, width=8, depth=1, heads=2))
"""

DIGITS = ["--teacher", "digits-cnn", "--dataset", "digits-eval", "--top-k", "3", "--shard-size", "128"]
TOKENS = ["--teacher", "golden_models:tiny_gpt", "--dataset", "tokens", "--seq-len", "24", "--shard-size", "5"]

STORES = {
    "v1-digits-zarr": [*DIGITS, "--format", "zarr"],
    "v1-digits-arrow": [*DIGITS, "--format", "arrow"],
    "v1-tokens-zarr": [*TOKENS, "--top-k", "4", "--format", "zarr"],
    "v1-tokens-uint32-arrow": [
        "--teacher",
        "golden_models:wide_gpt",
        "--dataset",
        "tokens",
        "--seq-len",
        "24",
        "--shard-size",
        "7",
        "--top-k",
        "3",
        "--format",
        "arrow",
    ],
    "v2-sample-zarr": [
        *TOKENS,
        "--top-k",
        "1",
        "--selection",
        "sample",
        "--draws",
        "8",
        "--seed",
        "3",
        "--format",
        "zarr",
    ],
    "v2-hybrid-arrow": [
        *TOKENS,
        "--top-k",
        "2",
        "--selection",
        "hybrid",
        "--draws",
        "6",
        "--sample-temperature",
        "2",
        "--format",
        "arrow",
    ],
    "v3-delta-logq8-zarr": [
        *TOKENS,
        "--top-k",
        "8",
        "--index-codec",
        "delta",
        "--value-codec",
        "logq",
        "--format",
        "zarr",
    ],
    "v3-delta-logq8-arrow": [
        *TOKENS,
        "--top-k",
        "8",
        "--index-codec",
        "delta",
        "--value-codec",
        "logq",
        "--format",
        "arrow",
    ],
    "v3-hybrid-plain-logq12-zarr": [
        *TOKENS,
        "--top-k",
        "3",
        "--selection",
        "hybrid",
        "--draws",
        "5",
        "--value-codec",
        "logq",
        "--value-bits",
        "12",
        "--format",
        "zarr",
    ],
    "v3-delta-float32-arrow": [*TOKENS, "--top-k", "5", "--index-codec", "delta", "--format", "arrow"],
    "v4-views-zarr": [*DIGITS, "--views", "2", "--augment", "digits-shift-rotate", "--seed", "5", "--format", "zarr"],
    "v4-views-arrow": [*DIGITS, "--views", "2", "--augment", "digits-shift-rotate", "--seed", "5", "--format", "arrow"],
}


def token_dataset(path: Path) -> None:
    """18 rows of 1..24 token ids (ids 1000 + 7i, unsorted in the file), some short, one of length 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2024)
    lengths = [24, 1, 17, 24, 3, 24, 9, 24, 24, 12, 2, 24, 20, 24, 5, 24, 24, 11]
    rows = [rng.integers(0, 300, size=n).tolist() for n in lengths]
    ids = (1000 + 7 * np.arange(len(rows)))[rng.permutation(len(rows))]
    pq.write_table(pa.table({"id": ids, "input_ids": rows}), path)


def array_digest(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def expected(store: Path) -> dict:
    from logitstore import StoreReader

    reader = StoreReader(store)
    m = reader.manifest
    shards = []
    for index in range(reader.num_shards):
        data = reader.read_shard(index)
        shards.append(
            {name: array_digest(getattr(data, name)) for name in ARRAY_NAMES if getattr(data, name, None) is not None}
        )
    return {
        "format_version": m.format_version,
        "backend": m.backend,
        "top_k": m.top_k,
        "vocab_size": m.vocab_size,
        "num_samples": m.num_samples,
        "num_positions": m.num_positions,
        "shards": shards,
    }


def pin(store: Path, record: dict) -> None:
    """Drop the writer's leftovers (lock, temporary files) and write the store's expected.json beside it."""
    for leftover in (".lock", ".tmp"):
        path = store / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (store.parent / f"{store.name}.expected.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{store.name}: format v{json.loads((store / 'manifest.json').read_text())['format_version']}")


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="golden-"))
    (work / "golden_models.py").write_text(textwrap.dedent(TEACHERS))
    token_dataset(work / "tokens.parquet")
    (work / "tokens").mkdir()
    shutil.move(work / "tokens.parquet", work / "tokens" / "part-0.parquet")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work), str(repo)])}
    for name, args in STORES.items():
        store = out / name
        shutil.rmtree(store, ignore_errors=True)
        cmd = [sys.executable, "-m", "jobs.dump_logits", *args, "--out", str(store), "--threads-per-worker", "1"]
        subprocess.run(cmd, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
        pin(store, expected(store))
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
