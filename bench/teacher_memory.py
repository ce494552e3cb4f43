"""Memory of a dump with a Hugging Face teacher: the driver's peak against the teacher's size, and one
replica's peak at a large vocabulary with and without chunked reductions.

    python -m bench.teacher_memory [--quick] [--work-dir DIR] [--json PATH] [--code DIR]

Each figure is the peak resident set (VmHWM, /proc/self/status) of a fresh process, so one
measurement cannot inflate the next (ru_maxrss would not do: Linux keeps it across exec, so a child
would start at its parent's size):
  driver   `python -m jobs.dump_logits` with a Llama-shaped teacher of ~50M and of ~400M parameters
           (random init, saved with save_pretrained in fp32), over the same 64 token rows of 128
           tokens, 1 worker; the driver's own peak (RUSAGE_SELF: not the Ray workers). --code runs
           the job from another checkout (e.g. a worktree of the code before a change), so before
           and after are measured side by side by the same script.
  replica  one TeacherScorer (what each Ray actor runs) with a Qwen2-shaped teacher at V = 151,936
           (2 layers, width 256), scoring one batch of 8 x 512 tokens, k=64, in fp32 and in bf16:
           the output layer and the reductions chunked (the default: logits made from the hidden
           states 256 MiB of fp32 at a time), the reductions only (the model's [B, T, V] output,
           reduced in chunks), and whole (one chunk: what the code did before issue 13, which
           upcast and reduced the batch's logits at once). The figure is the peak above the
           process's size once the teacher is loaded.
--quick (CI): smaller teachers (V = 32,768 for the replica, ~10M parameters for the driver) and this checkout only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import add_work_flags, markdown_table, random_token_parquet, write_json

REPO = Path(__file__).resolve().parent.parent
DRIVER_SIZES = {
    "50M": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8),
    "400M": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=26, num_attention_heads=16),
}
QUICK_SIZES = {"10M": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4)}

# Run in a fresh interpreter: the job's own main, then the driver's peak RSS on the last line.
DRIVER_CODE = """
import re, sys
from jobs import dump_logits
code = dump_logits.main(sys.argv[1:])  # the job's main (as __main__ it would end the process at once)
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print("PEAK_RSS_KB", hwm, code)
"""

REPLICA_CODE = """
import json, re, sys
import numpy as np
from logitstore import Selection, StoreLayout
from trainer.teacher.scorer import TeacherScorer
teacher, precision, split = sys.argv[1], sys.argv[2], sys.argv[5]
chunk_bytes, vocab = int(sys.argv[3]), int(sys.argv[4])
layout = StoreLayout.make(backend="zarr", top_k=64, vocab_size=vocab, temperatures=(1.0, 2.0, 4.0), shard_size=64,
                          selection=Selection(), index_codec="delta", value_codec="logq", value_bits=8, views=None)
scorer = TeacherScorer(teacher, None, layout, precision, 2, chunk_bytes=chunk_bytes)
if scorer.init_error is not None:
    raise scorer.init_error
scorer.split_head = scorer.split_head and split == "1"
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
loaded = hwm()
rng = np.random.default_rng(0)
batch = {"id": np.arange(8), "shard": np.zeros(8, np.int64), "input_ids": rng.integers(0, vocab, (8, 512)),
         "length": np.full(8, 512)}
out = scorer.score(batch)
print(json.dumps({"loaded_kb": loaded, "peak_kb": hwm(),
                  "positions": int(out["positions"].sum())}))
"""


def save_llama(path: Path, vocab: int, shape: dict) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (path / "config.json").exists():
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=vocab, max_position_embeddings=512, num_key_value_heads=shape["num_attention_heads"], **shape
        )
        LlamaForCausalLM(config).save_pretrained(path)
    return f"hf:{path}"


def save_qwen(path: Path, vocab: int) -> str:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if not (path / "config.json").exists():
        torch.manual_seed(0)
        config = Qwen2Config(
            vocab_size=vocab,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
        )
        Qwen2ForCausalLM(config).save_pretrained(path)
    return f"hf:{path}"


def run_python(code: str, args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed in {cwd}:\n{done.stderr[-3000:]}")
    return done.stdout


def driver_peak(code_dir: Path, teacher: str, data: str, out: Path) -> dict:
    args = [
        "--teacher",
        teacher,
        "--dataset",
        data,
        "--out",
        str(out),
        "--top-k",
        "64",
        "--seq-len",
        "128",
        "--workers",
        "1",
        "--overwrite",
    ]
    line = [x for x in run_python(DRIVER_CODE, args, code_dir).splitlines() if x.startswith("PEAK_RSS_KB")][-1]
    _, kb, exit_code = line.split()
    if exit_code not in ("0", "None"):
        raise RuntimeError(f"dump_logits exited {exit_code} in {code_dir}")
    return {"driver_peak_mb": int(kb) / 1024}


# How one replica turns a batch into logits and reduces them: (name, output layer per chunk, reductions per chunk)
REPLICA_MODES = (("output layer + reductions", True, True), ("reductions", False, True), ("whole", False, False))


def replica_peak(teacher: str, precision: str, split: bool, chunked: bool, vocab: int) -> dict:
    from trainer.teacher.scorer import CHUNK_BYTES

    chunk = CHUNK_BYTES if chunked else 1 << 50
    args = [teacher, precision, str(chunk), str(vocab), "1" if split else "0"]
    got = json.loads(run_python(REPLICA_CODE, args, REPO).splitlines()[-1])
    return {
        "loaded_mb": got["loaded_kb"] / 1024,
        "peak_mb": got["peak_kb"] / 1024,
        "scoring_mb": (got["peak_kb"] - got["loaded_kb"]) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.teacher_memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small teachers, this checkout only (CI)")
    parser.add_argument(
        "--code", action="append", default=[], help="another checkout to run the driver from (repeatable)"
    )
    parser.add_argument("--only", choices=("driver", "replica"), default=None, help="measure one part only")
    add_work_flags(parser)
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-teacher-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    vocab = 32_768 if args.quick else 151_936
    data = random_token_parquet(work / "tokens.parquet", 64, 128, 32_000)
    drivers = []
    sizes = {} if args.only == "replica" else QUICK_SIZES if args.quick else DRIVER_SIZES
    for size, shape in sizes.items():
        teacher = save_llama(work / f"llama-{size}", 32_000, shape)
        for code_dir in [REPO, *map(Path, args.code)]:
            row = {"teacher": size, "code": "this" if code_dir == REPO else str(code_dir)}
            drivers.append({**row, **driver_peak(code_dir, teacher, data, work / f"store-{size}")})
            print(drivers[-1], flush=True)
    replicas = []
    qwen = save_qwen(work / f"qwen-v{vocab}", vocab) if args.only != "driver" else ""
    for precision in ("fp32", "bf16") if qwen else ():
        for mode, split, chunked in REPLICA_MODES:
            replicas.append(
                {"precision": precision, "chunked": mode, **replica_peak(qwen, precision, split, chunked, vocab)}
            )
            print(replicas[-1], flush=True)
    print("\nDriver peak RSS of an hf: dump (MB)\n")
    print(markdown_table(drivers, [("teacher", "{}"), ("code", "{}"), ("driver_peak_mb", "{:.0f}")]))
    print(f"\nOne replica scoring 8 x 512 tokens at V = {vocab:,} (MB)\n")
    print(
        markdown_table(
            replicas,
            [
                ("precision", "{}"),
                ("chunked", "{}"),
                ("loaded_mb", "{:.0f}"),
                ("peak_mb", "{:.0f}"),
                ("scoring_mb", "{:.0f}"),
            ],
        )
    )
    if args.json:
        write_json(args.json, {"driver": drivers, "replica": replicas, "vocab": vocab})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
