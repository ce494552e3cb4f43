"""How well an epoch's order mixes a store's shards: the share of a batch's rows from its most common
shard, for the training join (trainer/student/join.py) against a uniformly random order.

    python -m bench.data_order --stores STORE[,STORE...] --dataset D [--batch-size 32] [--epochs 2]
                               [--seed 1] [--shuffle-window 8192] [--json PATH]
    python -m bench.data_order --quick      # CI-sized: a briefly trained stdlib-gpt over stdlib-small-eval

Per store: the mean and median share over every batch of `--epochs` epochs, the mean number of
distinct shards per batch, and the same figures for batches cut from uniformly random
permutations of the same samples (the baseline a perfect shuffle reaches). A share near 1 means a
batch is mostly one shard's consecutive samples: correlated gradients.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import add_work_flags, markdown_table, quick_teacher, work_dir, write_json
from logitstore import read_manifest
from trainer.inputs.datasets import load_dataset
from trainer.ray_env import ensure_ray
from trainer.student.config import SHUFFLE_WINDOW, Data
from trainer.student.join import JoinSpec, join_with_store
from trainer.student.stores import RunStores


def shares(shards: list[np.ndarray]) -> tuple[float, float, float]:
    """(mean, median) most-common-shard share and mean distinct shards of batches given by their rows' shards."""
    top = [np.bincount(s).max() / len(s) for s in shards]
    return float(np.mean(top)), float(np.median(top)), float(np.mean([len(np.unique(s)) for s in shards]))


def measure(store: str, dataset: str, batch_size: int, epochs: int, seed: int, window: int) -> dict:
    manifest = read_manifest(store)
    stores = RunStores.open(Data(store=store))
    joined = join_with_store(
        load_dataset(dataset, "--dataset", stores.text), JoinSpec(store, manifest, (), batch_size, seed, window)
    )
    batches = [
        row["shard"][0] for _ in range(epochs) for row in joined.iter_batches(batch_size=1, batch_format="numpy")
    ]
    # The baseline: the same samples (by shard) in uniformly random orders, cut into batches alike.
    sample_shard = np.concatenate([np.full(info.num_samples, j) for j, info in enumerate(manifest.shards)])
    rng = np.random.default_rng(seed)
    random_batches = []
    for _ in range(epochs):
        order = sample_shard[rng.permutation(len(sample_shard))]
        random_batches += [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    mean, median, distinct = shares(batches)
    r_mean, r_median, r_distinct = shares(random_batches)
    return {
        "store": Path(store).name,
        "shards": len(manifest.shards),
        "batches": len(batches),
        "share_mean": mean,
        "share_median": median,
        "distinct_shards": distinct,
        "random_share_mean": r_mean,
        "random_share_median": r_median,
        "random_distinct_shards": r_distinct,
    }


def quick_stores(work: Path) -> list[str]:
    from trainer.teacher.config import DumpConfig
    from trainer.teacher.pipeline import run_dump

    stores = []
    for name, extra in (("topk", {"top_k": 8}), ("sample", {"top_k": 1, "selection": "sample", "draws": 64})):
        out = work / name
        run_dump(
            DumpConfig(
                teacher="stdlib-gpt", dataset="stdlib-small-eval", out=str(out), shard_size=32, overwrite=True, **extra
            )
        )
        stores.append(str(out))
    return stores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.data_order", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stores", default="", help="comma-separated stores to measure (default with --quick: two made here)"
    )
    parser.add_argument("--dataset", default="stdlib-small-eval", help="the data the stores were dumped from")
    parser.add_argument(
        "--quick", action="store_true", help="CI: stores of a briefly trained teacher over stdlib-small-eval"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shuffle-window", type=int, default=SHUFFLE_WINDOW)
    add_work_flags(parser)
    args = parser.parse_args(argv)
    if not args.stores and not args.quick:
        parser.error("pass --stores, or --quick")
    ensure_ray()
    work = work_dir(args, "data-order")
    with quick_teacher("stdlib-gpt", work / "cache", enabled=args.quick):
        stores = args.stores.split(",") if args.stores else quick_stores(work)
        rows = [measure(s, args.dataset, args.batch_size, args.epochs, args.seed, args.shuffle_window) for s in stores]
    print(
        f"\nBatch mixing over {args.dataset}: batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}, "
        f"shuffle window {args.shuffle_window} samples\n"
    )
    print(
        markdown_table(
            rows,
            [
                ("store", "{}"),
                ("shards", "{}"),
                ("batches", "{}"),
                ("share_mean", "{:.3f}"),
                ("share_median", "{:.3f}"),
                ("random_share_mean", "{:.3f}"),
                ("distinct_shards", "{:.2f}"),
                ("random_distinct_shards", "{:.2f}"),
            ],
        )
    )
    if args.json:
        write_json(args.json, {"data_order": {"args": vars(args), "rows": rows}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
