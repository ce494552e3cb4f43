"""Student quality with and without the teacher's stored features, at equal steps.

    python -m bench.feature_quality [--seeds 3] [--only digits|smollm2] [--work-dir DIR] [--json PATH]

Each seed is ONE train_student run of two students on the same batches (`--variants`): one with
`--feature-map` at `--feature-weight`, its twin at weight 0; everything else equal (KD and CE as
in the README's examples). Jobs run as a user runs them (python -m jobs...).

- digits few-labels: the digits CNN's fc1 (layer 3, width 128) stored at R = 32; the digits-mlp
  student's hidden layer (16 units) mapped to it; held-out accuracy on digits-eval.
- SmolLM2 (the README's showcase; needs models/smollm2, models/smollm2-d20 and data/docs-*.jsonl
  made by its commands): the teacher's layers 12 and 25 stored at R = 64; the cut student's
  layers 10 and 17, which are the teacher's 12 and 25 (its layers 9 and 16 are the teacher's 11
  and 24); held-out documentation perplexity.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import add_work_flags, drop_weights, markdown_table, run_module, work_dir, write_json


def paired_runs(work: Path, name: str, dump: list[str], train: list[str], metric: str, seeds: int) -> dict:
    """The store dumped once (`dump`: dump_logits' flags but --out), then per seed one train_student
    run of the featured student and its twin (`train`: the run's flags but --store, --output,
    --seed), each kept in `work` (its weights dropped) -> {"metric", "per_seed": [[with, without]]}."""
    store = work / f"{name}-features"
    if not (store / "manifest.json").exists():
        run_module("jobs.dump_logits", *dump, "--out", str(store))
    per_seed = []
    for seed in range(seeds):
        out = work / f"{name}-s{seed}"
        if not (out / "metrics.json").exists():
            run_module("jobs.train_student", "--store", str(store), "--output", str(out), "--seed", str(seed),
                       *train, "--variants", '[{}, {"feature_weight": 0}]', "--overwrite")  # fmt: skip
            drop_weights(out)
        per_seed.append([s[metric] for s in json.loads((out / "metrics.json").read_text())["students"]])
    return {"metric": metric, "per_seed": per_seed}


def digits_runs(work: Path, seeds: int, loss: str, weight: float) -> dict:
    dump = ["--teacher", "digits-cnn", "--dataset", "digits", "--hidden-layers", "3", "--hidden-dim", "32"]
    train = ["--dataset", "digits-fewlabels", "--eval-dataset", "digits-eval", "--student", "digits-mlp",
             "--feature-map", "1:3", "--feature-loss", loss, "--feature-weight", str(weight)]  # fmt: skip
    return paired_runs(work, "digits", dump, train, "eval_accuracy", seeds)


def smollm2_runs(work: Path, seeds: int, loss: str, weight: float, epochs: int) -> dict:
    dump = ["--teacher", "hf:models/smollm2", "--dataset", "data/docs-train.jsonl", "--top-k", "64", "--seq-len",
            "256", "--threads-per-worker", "2", "--hidden-layers", "12,25", "--hidden-dim", "64"]  # fmt: skip
    train = ["--student", "hf:models/smollm2-d20", "--eval-dataset", "data/docs-eval.jsonl", "--epochs", str(epochs),
             "--batch-size", "8", "--lr", "1e-4", "--alpha", "0.5", "--threads-per-worker", "2", "--feature-map",
             "10:12,17:25", "--feature-loss", loss, "--feature-weight", str(weight)]  # fmt: skip
    return paired_runs(work, "smollm2", dump, train, "eval_perplexity", seeds)


def rows(name: str, result: dict, lower_is_better: bool) -> list[dict]:
    pairs = result["per_seed"]
    out = []
    for i, label in enumerate(("with features", "without (weight 0)")):
        values = [p[i] for p in pairs]
        out.append({
            "task": name, "student": label, result["metric"]: statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": ", ".join(f"{v:.4g}" for v in values),
        })  # fmt: skip
    better = sum((a < b) if lower_is_better else (a > b) for a, b in pairs)
    out[0]["wins"] = f"{better} of {len(pairs)}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.feature_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=("digits", "smollm2"), default=None)
    parser.add_argument("--feature-loss", default="cosine", choices=("mse", "cosine"))
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=2, help="the SmolLM2 runs' epochs (the README's: 2)")
    add_work_flags(parser)
    args = parser.parse_args(argv)
    work = work_dir(args, "feature-quality")
    table, figures = [], {"feature_loss": args.feature_loss, "feature_weight": args.feature_weight}
    if args.only in (None, "digits"):
        figures["digits"] = digits_runs(work, args.seeds, args.feature_loss, args.feature_weight)
        table += rows("digits few-labels (accuracy)", figures["digits"], lower_is_better=False)
    if args.only in (None, "smollm2"):
        figures["smollm2"] = smollm2_runs(work, args.seeds, args.feature_loss, args.feature_weight, args.epochs)
        table += rows("SmolLM2 cut, docs (perplexity)", figures["smollm2"], lower_is_better=True)
    columns = [("task", "{}"), ("student", "{}"), ("eval_accuracy", "{:.4f}"), ("eval_perplexity", "{:.2f}"),
               ("sd", "{:.4f}"), ("wins", "{}"), ("seeds", "{}")]  # fmt: skip
    print(markdown_table(table, columns))
    if args.json:
        write_json(args.json, {"feature_quality": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
