"""What can be measured here of a teacher pass at cluster scale (docs/SCALE.md uses the figures).

    python -m bench.scale [--shards 100000] [--rows 4096] [--length 2048] [--json PATH]

1. The manifest of a store of `--shards` shards (the driver writes it once, every reader parses
   it): its size, the time to serialise it, to parse and check it, and to build the reader's shard
   plan from it.
2. The dump's fingerprint pass (one pass over the dataset on Ray Data before any teacher runs: ids
   and a digest per sample, gathered on the driver): rows/s and tokens/s on `--rows` random token
   blocks of `--length` tokens read from Parquet, on this machine's local Ray; and the driver's
   part alone (sorting and hashing the gathered ids and digests) for 1M samples.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import markdown_table, random_token_parquet, write_json


def manifest_figures(shards: int) -> dict:
    from logitstore.manifest import Manifest, ShardInfo, parse_manifest, shard_name
    from logitstore.testing import TEST_TEACHER, layout_for

    layout = layout_for("zarr", k=64, vocab=152_064, shard_size=512)
    infos = [
        ShardInfo(
            index=i,
            name=shard_name(i, "zarr", f"{i:012x}"),
            first_id=i * 512 * 65536,
            last_id=i * 512 * 65536 + 511,
            num_samples=512,
            num_positions=512 * 2047,
            num_bytes=512 * 2047 * 64 * 2,
            sha256=hashlib.sha256(str(i).encode()).hexdigest(),
        )
        for i in range(shards)
    ]
    manifest = Manifest(
        layout=layout,
        num_samples=512 * shards,
        num_positions=512 * 2047 * shards,
        teacher=TEST_TEACHER,
        dataset={"spec": "bench", "num_samples": 512 * shards},
        shards=infos,
        format_version=8,  # Zarr shards on object storage are .zarr.zip objects (version 8)
    )
    start = time.perf_counter()
    text = manifest.to_json()
    serialise = time.perf_counter() - start
    start = time.perf_counter()
    parsed = parse_manifest(text)
    parse = time.perf_counter() - start
    start = time.perf_counter()
    parsed.plan()
    plan = time.perf_counter() - start
    return {
        "shards": shards,
        "manifest_mb": len(text.encode()) / 1e6,
        "serialise_s": serialise,
        "parse_s": parse,
        "plan_s": plan,
    }


def fingerprint_figures(rows: int, length: int) -> dict:
    import ray

    from trainer.inputs.datasets import TextOptions, fingerprint_dataset, load_dataset
    from trainer.ray_env import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    path = random_token_parquet(work / "tokens.parquet", rows, length, 32_000)
    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    options = TextOptions(seq_len=length)
    fingerprint_dataset(load_dataset(path, text=options), path)  # warm: workers started, modules imported
    start = time.perf_counter()
    fingerprint_dataset(load_dataset(path, text=options), path)
    seconds = time.perf_counter() - start
    # The driver's own part for 1M samples: sort ids and digests, check uniqueness, hash both.
    rng = np.random.default_rng(0)
    ids, digests = rng.permutation(1_000_000).astype(np.int64), rng.bytes(16 * 1_000_000)
    start = time.perf_counter()
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    np.nonzero(np.diff(sorted_ids) == 0)
    hashlib.sha256(sorted_ids.astype("<i8").tobytes()).hexdigest()
    hashlib.sha256(np.frombuffer(digests, dtype="V16")[order].tobytes()).hexdigest()
    driver = time.perf_counter() - start
    return {
        "rows": rows,
        "tokens": rows * length,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "tokens_per_s": rows * length / seconds,
        "driver_1m_samples_s": driver,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    m = manifest_figures(args.shards)
    columns = [("shards", "{:,}"), ("manifest_mb", "{:.1f}"), ("serialise_s", "{:.2f}"), ("parse_s", "{:.2f}")]
    print(markdown_table([m], columns + [("plan_s", "{:.3f}")]), flush=True)
    f = fingerprint_figures(args.rows, args.length)
    columns = [("rows", "{:,}"), ("tokens", "{:,}"), ("seconds", "{:.1f}"), ("rows_per_s", "{:,.0f}")]
    print(markdown_table([f], columns + [("tokens_per_s", "{:,.0f}"), ("driver_1m_samples_s", "{:.2f}")]))
    if args.json:
        write_json(args.json, {"manifest": m, "fingerprint": f})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
