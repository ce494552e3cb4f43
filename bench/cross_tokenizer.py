"""A student of another tokenizer distilled from the SmolLM2 showcase store, against its labels-only twin.

    python -m bench.cross_tokenizer [--seeds 3] [--loss uld|gold] [--work-dir DIR] [--json PATH]

The README's showcase store (SmolLM2-135M-Instruct over 16 documentation passages, its own
tokenizer, 49,152 tokens) trains a from-scratch Llama whose tokenizer is the built-in `bpe:8192` (a
byte-level BPE trained on the Python standard library's sources, 8,192 tokens): each seed is ONE
train_student run of two students on the same batches (`--variants`), KD across tokenizers at alpha
0.5 and its twin at alpha 0 (labels only), 12 epochs (36 steps of 8 passages) at lr 3e-3. Held-out
documentation perplexity per student token (both students read the same tokens, so the figures
compare) and the share of the store's positions that align. Needs models/smollm2 and
data/docs-*.jsonl (the README's showcase commands).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from bench.common import add_work_flags, drop_weights, markdown_table, run_module, work_dir, write_json

STUDENT = "hf-config:examples/smollm2-bpe8192-student.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cross_tokenizer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--loss", default="uld", choices=("uld", "gold"))
    parser.add_argument("--epochs", type=int, default=12)
    add_work_flags(parser)
    args = parser.parse_args(argv)
    work = work_dir(args, "cross-tokenizer")
    store = work / "docs"
    if not (store / "manifest.json").exists():
        run_module("jobs.dump_logits", "--teacher", "hf:models/smollm2", "--dataset", "data/docs-train.jsonl",
                   "--out", str(store), "--top-k", "64", "--seq-len", "256", "--threads-per-worker", "2")  # fmt: skip
    per_seed, aligned = [], ""
    for seed in range(args.seeds):
        out = work / f"{args.loss}-e{args.epochs}-s{seed}"
        if not (out / "metrics.json").exists():
            cmd = [sys.executable, "-m", "jobs.train_student", "--store", str(store), "--student", STUDENT,
                   "--student-tokenizer", "bpe:8192", "--cross-tokenizer", args.loss, "--eval-dataset",
                   "data/docs-eval.jsonl", "--output", str(out), "--epochs", str(args.epochs), "--batch-size", "8",
                   "--lr", "3e-3", "--threads-per-worker", "2", "--seed", str(seed), "--variants",
                   '[{"alpha": 0.5}, {"alpha": 0}]', "--overwrite"]  # fmt: skip
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            aligned = next((x for x in done.stderr.splitlines() if x.startswith("across tokenizers:")), aligned)
            drop_weights(out)
        per_seed.append([s["eval_perplexity"] for s in json.loads((out / "metrics.json").read_text())["students"]])
    rows = []
    for i, name in enumerate((f"KD across tokenizers ({args.loss}, alpha 0.5)", "labels only (alpha 0)")):
        values = [p[i] for p in per_seed]
        rows.append({
            "student": name, "eval_perplexity": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "seeds": ", ".join(f"{v:.2f}" for v in values),
        })  # fmt: skip
    rows[0]["wins"] = f"{sum(a < b for a, b in per_seed)} of {len(per_seed)}"
    print(aligned)
    print(markdown_table(rows, [("student", "{}"), ("eval_perplexity", "{:.2f}"), ("sd", "{:.2f}"), ("wins", "{}"),
                                ("seeds", "{}")]))  # fmt: skip
    if args.json:
        write_json(args.json, {f"cross_tokenizer_{args.loss}": {"per_seed": per_seed, "aligned": aligned}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
