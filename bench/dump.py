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

--hf: a Hugging Face teacher instead, GPT-2 architecture from a config (6 layers, width 384,
V = 32,768, random init, saved with save_pretrained), batch 16 x 128 random tokens, all threads,
k=64, delta/logq8, shards of 64 blocks: the whole `python -m jobs.dump_logits` process (Ray's
start included) at 49k and 197k tokens against the bare `model(input_ids).logits` loop over the
same tokens, measured just before it. Steady: the job's rate between its first and last shard
written; fixed: the job's seconds beyond its tokens at that rate. --code DIR also runs the job
from another checkout (before/after, side by side).
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

from bench.common import markdown_table, quick_teacher, random_token_parquet, write_json
from trainer.builtin.stdlib import example
from trainer.inputs.datasets import TEXT_PARTS, TextOptions, text_part
from trainer.inputs.models import build_model
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


HF_BATCH, HF_LEN = 16, 128


def hf_teacher(work: Path) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32_768, n_positions=HF_LEN, n_embd=384, n_layer=6, n_head=6)
    GPT2LMHeadModel(config).save_pretrained(work / "gpt2-6x384")
    return f"hf:{work / 'gpt2-6x384'}"


def hf_bare(teacher: str, data: str, threads: int) -> float:
    """Seconds of the bare `model(input_ids).logits` loop over the file's tokens, batch 16."""
    import pyarrow.parquet as pq

    ids = torch.tensor(pq.read_table(data).column("input_ids").to_pylist())
    model = build_model(teacher, "--teacher").eval()  # forward: model(input_ids, use_cache=False).logits
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            model(ids[:HF_BATCH])  # warm-up
            start = time.perf_counter()
            for s in range(0, ids.shape[0], HF_BATCH):
                model(ids[s : s + HF_BATCH])
            return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def hf_dump(teacher: str, data: str, out: Path, threads: int, code: Path | None = None) -> tuple[float, float]:
    """Seconds of the whole `python -m jobs.dump_logits` process (a fresh interpreter, Ray started
    by it), run from the checkout `code` (default: this one), and its steady rate (positions/s
    between the first and the last shard written)."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "jobs.dump_logits", "--teacher", teacher, "--dataset", data, "--out", str(out)]
    args += ["--top-k", "64", "--index-codec", "delta", "--value-codec", "logq", "--value-bits", "8"]
    args += ["--batch-size", str(HF_BATCH), "--seq-len", str(HF_LEN), "--threads-per-worker", str(threads)]
    args += ["--shard-size", "64"]
    start = time.perf_counter()
    code = code or Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(args, capture_output=True, text=True, cwd=code, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"dump_logits failed:\n{done.stderr[-2000:]}")
    steady = steady_rate(out)
    shutil.rmtree(out, ignore_errors=True)
    return seconds, steady


def hf_main(quick: bool, json_path: str | None, code: Path | None) -> int:
    threads = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-dump-hf-"))
    sizes = (48, 96) if quick else (384, 1536)  # blocks of 128 tokens: 49k and 197k tokens
    rows = []
    try:
        teacher = hf_teacher(work)
        for blocks in sizes:
            data = random_token_parquet(work / f"tokens-{blocks}.parquet", blocks, HF_LEN, 32_768, seed=blocks)
            tokens = blocks * HF_LEN
            runs = {"this": None} if code is None else {"this": None, "other": code}
            bare = hf_bare(teacher, data, threads)
            for tag, checkout in runs.items():  # each job right after the bare loop's measurement
                seconds, steady = hf_dump(teacher, data, work / "store", threads, checkout)
                rows.append(
                    {
                        "code": tag,
                        "tokens": tokens,
                        "bare_s": bare,
                        "dump_s": seconds,
                        "dump_vs_bare": bare / seconds,
                        "steady_vs_bare": steady / (tokens / bare),
                        "fixed_s": seconds - tokens / steady,
                    }
                )
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    largest = {r["code"]: r for r in rows if r["tokens"] == sizes[-1] * HF_LEN}
    figures = {
        f"hf_{tag}_{key}": r[key] for tag, r in largest.items() for key in ("dump_vs_bare", "steady_vs_bare", "fixed_s")
    }
    print(f"\nDump of an HF GPT-2 teacher (6 x 384, V = 32,768) vs its bare loop, {threads} threads, batch 16 x 128\n")
    columns = [("code", "{}"), ("tokens", "{}"), ("bare_s", "{:.1f}"), ("dump_s", "{:.1f}"), ("dump_vs_bare", "{:.3f}")]
    print(markdown_table(rows, [*columns, ("steady_vs_bare", "{:.3f}"), ("fixed_s", "{:.1f}")]))
    print("\n" + "  ".join(f"{k} = {v:.3f}" for k, v in figures.items()))
    if json_path:
        write_json(json_path, {**figures, "dump_hf": {"quick": quick, "rows": rows}})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dump", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI: a briefly trained byte-level teacher over the small eval text"
    )
    parser.add_argument(
        "--hf", action="store_true", help="a Hugging Face GPT-2 teacher, the whole job vs its bare loop"
    )
    parser.add_argument(
        "--code", default=None, help="with --hf: also run the job from this other checkout (before/after)"
    )
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.hf:
        return hf_main(args.quick, args.json, Path(args.code) if args.code else None)
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
