"""Do two stores hold the same content? Compares every decoded array of every shard, bit for bit.

    python -m scripts.compare_stores STORE_A STORE_B [STORE_A2 STORE_B2 ...]

Prints, per pair, the shards, positions and arrays compared and whether the layouts, teacher
weights and dataset fingerprints agree (the manifests' informative keys, such as `config` and
`created_by`, may differ). Exit status 0 when every pair decodes identically, 1 otherwise.
"""

from __future__ import annotations

import sys

import numpy as np

from logitstore import StoreReader


def compare(a: str, b: str) -> list[str]:
    ra, rb = StoreReader(a), StoreReader(b)
    ma, mb = ra.manifest, rb.manifest
    problems = []
    if ma.layout != mb.layout:
        problems.append(f"layouts differ: {ma.layout.to_json()} vs {mb.layout.to_json()}")
    for key in ("weights_sha256", "num_parameters", "dtype"):
        if ma.teacher.get(key) != mb.teacher.get(key):
            problems.append(f"teacher {key} differs")
    for key in ("ids_sha256", "inputs_sha256", "num_samples"):
        if ma.dataset.get(key) != mb.dataset.get(key):
            problems.append(f"dataset {key} differs")
    if ra.num_shards != rb.num_shards:
        return problems + [f"{ra.num_shards} vs {rb.num_shards} shards"]
    arrays = 0
    for index in range(ra.num_shards):
        x, y = ra.read_shard(index).arrays(), rb.read_shard(index).arrays()
        if x.keys() != y.keys():
            problems.append(f"shard {index}: arrays {sorted(x)} vs {sorted(y)}")
            continue
        for name in x:
            arrays += 1
            same = (
                x[name].dtype == y[name].dtype and x[name].shape == y[name].shape and np.array_equal(x[name], y[name])
            )
            if not same:
                problems.append(f"shard {index}: {name} differs")
    print(
        f"{a} vs {b}: {ra.num_shards} shards, {ma.num_positions} positions, {arrays} arrays compared: "
        + ("identical" if not problems else f"{len(problems)} differences")
    )
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or len(args) % 2:
        print(__doc__, file=sys.stderr)
        return 2
    problems = []
    for a, b in zip(args[::2], args[1::2]):
        problems += compare(a, b)
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
