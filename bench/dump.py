"""The dump job against a bare teacher inference loop, and its scaling from 1 to 2 workers.

    python -m bench.dump [--quick] [--json PATH]

Side by side in one run, on one machine (the local Ray cluster is started first, so its start-up
is not counted; everything else the job does is: the dataset's fingerprint pass, the shuffle by
shard, the teacher, top-k and normalisers, encoding, writing, the manifest):
  bare      the teacher's forward pass over the same token blocks, same batch size, same threads,
            in a plain Python loop (the blocks are tokenised beforehand, not timed)
  dump      `python -m jobs.dump_logits` (run_dump) with 1 worker of that many threads,
            k=64, delta/logq8 codec, zarr
  scaling   the dump with 2 workers of 1 thread each / 1 worker of 1 thread
Rates are positions/s end to end, and steady (between the first and the last shard written, so
without the job's fixed start-up of several seconds); the goal figures use the steady rates.
Teacher: stdlib-gpt-bpe8192 over stdlib-small (tokenised with bpe:8192). --quick (CI): the
byte-level teacher briefly trained, over stdlib-small-eval, 1-thread runs only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import markdown_table, quick_teacher, write_json
from trainer.builtin.stdlib import example
from trainer.inputs.datasets import TEXT_PARTS, TextOptions, text_part
from trainer.inputs.tokenizers import resolve_tokenizer
from trainer.ray_env import ensure_ray
from trainer.teacher.config import DumpConfig
from trainer.teacher.pipeline import run_dump

BATCH = 32


def bare_loop(name: str, dataset: str, threads: int) -> tuple[float, int, None]:
    """Forward passes only -> (seconds, positions)."""
    spec = example.TEACHERS[name]
    options = TextOptions(tokenizer_json=resolve_tokenizer(spec.tokenizer).to_json())
    parts = [text_part(dataset, p, options) for p in range(TEXT_PARTS)]
    ids = torch.from_numpy(np.concatenate([p["input_ids"] for p in parts]))
    lengths = np.concatenate([p["length"] for p in parts])
    model = example.load_teacher(name)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            model(ids[:BATCH])  # warm-up
            start = time.perf_counter()
            for s in range(0, ids.shape[0], BATCH):
                model(ids[s : s + BATCH])
            seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return seconds, int(lengths.sum()), None


def steady_rate(store: Path) -> float:
    """Positions/s between the first and the last shard finished (their files' write times): the
    job's rate once running, without the fixed start-up (fingerprint pass, shuffle, actor start)."""
    from logitstore import read_manifest

    m = read_manifest(store)
    done = sorted(
        (max(f.stat().st_mtime for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()), s.num_positions)
        for s in m.shards
        for p in [store / s.name]
    )
    span = done[-1][0] - done[0][0]
    return sum(n for _, n in done[1:]) / span if span > 0 else float("nan")


def dump(name: str, dataset: str, work: Path, workers: int, threads: int, tag: str) -> tuple[float, int, float]:
    cfg = DumpConfig(
        teacher=name,
        dataset=dataset,
        out=str(work / tag),
        tokenizer=example.TEACHERS[name].tokenizer,
        top_k=64,
        index_codec="delta",
        value_codec="logq",
        value_bits=8,
        batch_size=BATCH,
        workers=workers,
        threads_per_worker=threads,
        shard_size=64,
    )
    problems = cfg.validate()
    if problems:
        raise SystemExit("; ".join(problems))
    summary = run_dump(cfg)
    rate = steady_rate(work / tag)
    shutil.rmtree(work / tag, ignore_errors=True)
    return summary.seconds, summary.manifest.num_positions, rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dump", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI: a briefly trained byte-level teacher over the small eval text"
    )
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    name, dataset = ("stdlib-gpt", "stdlib-small-eval") if args.quick else ("stdlib-gpt-bpe8192", "stdlib-small")
    cpus = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-dump-"))
    rows = []
    runs = [
        (f"bare loop, {cpus} threads", lambda: bare_loop(name, dataset, cpus)),
        (f"dump, 1 worker x {cpus} threads", lambda: dump(name, dataset, work, 1, cpus, "d1")),
        ("bare loop, 1 thread", lambda: bare_loop(name, dataset, 1)),
        ("dump, 1 worker x 1 thread", lambda: dump(name, dataset, work, 1, 1, "w1")),
        ("dump, 2 workers x 1 thread", lambda: dump(name, dataset, work, 2, 1, "w2")),
    ]
    if args.quick or cpus == 1:  # the 1-thread pair stands for both (two dumps fewer)
        runs = runs[2:]
    try:
        with quick_teacher(name, work / "cache", enabled=args.quick):
            ensure_ray()
            for label, fn in runs:
                seconds, positions, steady = fn()
                rows.append(
                    {
                        "run": label,
                        "seconds": seconds,
                        "positions": positions,
                        "positions_s": positions / seconds,
                        "steady_positions_s": steady if steady is not None else positions / seconds,
                    }
                )
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = {r["run"]: r["steady_positions_s"] for r in rows}
    whole = {r["run"]: r["positions_s"] for r in rows}
    full = (
        f"dump, 1 worker x {cpus} threads"
        if f"dump, 1 worker x {cpus} threads" in rate
        else "dump, 1 worker x 1 thread"
    )
    bare = f"bare loop, {cpus} threads" if f"bare loop, {cpus} threads" in rate else "bare loop, 1 thread"
    figures = {
        "dump_vs_bare": rate[full] / rate[bare],
        "dump_vs_bare_end_to_end": whole[full] / whole[bare],
        "dump_vs_bare_1_thread": rate["dump, 1 worker x 1 thread"] / rate["bare loop, 1 thread"],
        "scaling_dump_2v1": rate["dump, 2 workers x 1 thread"] / rate["dump, 1 worker x 1 thread"],
        "scaling_dump_2v1_end_to_end": whole["dump, 2 workers x 1 thread"] / whole["dump, 1 worker x 1 thread"],
    }
    print(f"\nDump vs bare teacher loop: {name} over {dataset}, batch {BATCH}, k=64, delta/logq8, zarr\n")
    print(
        markdown_table(
            rows,
            [
                ("run", "{}"),
                ("positions", "{}"),
                ("seconds", "{:.1f}"),
                ("positions_s", "{:.0f}"),
                ("steady_positions_s", "{:.0f}"),
            ],
        )
    )
    print("\n" + "  ".join(f"{k} = {v:.3f}" for k, v in figures.items()))
    if args.json:
        write_json(
            args.json, {**figures, "dump": {"teacher": name, "dataset": dataset, "quick": args.quick, "rows": rows}}
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
