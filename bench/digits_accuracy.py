"""Held-out accuracy on digits, mean of several seeds: teacher vs distilled student vs labels-only.

    python -m bench.digits_accuracy [--seeds 3] [--epochs 30] [--json PATH]

One teacher pass (train and eval stores, k=5); then, for the full-label and the few-labels
(~10%) variants of the train split, the same student trained from the SAME store with KD
(T=4, alpha=0.9) and with labels only (alpha=0). The teacher's accuracy comes from the eval store
(its stored top-1), so the teacher is not run again. Everything runs in one Ray session.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from bench.common import add_work_flags, digits_stores, work_dir
from logitstore import StoreReader
from trainer.builtin import digits
from trainer.student.config import TrainConfig
from trainer.student.run import run_training


def teacher_accuracy(store: str) -> float:
    labels = digits.load_split("eval")
    reader = StoreReader(store)
    top1 = reader.lookup(labels["id"]).topk_index[:, 0]
    return float(np.mean(top1 == labels["label"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.digits_accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--format", default="zarr")
    add_work_flags(parser)
    args = parser.parse_args(argv)

    work = work_dir(args, "digits-accuracy")
    stores = digits_stores(work, top_k=args.top_k, format=args.format)
    results: dict[str, dict[str, list[float]]] = {}
    for setting, dataset in (("full labels", "digits"), ("few labels (~10%)", "digits-fewlabels")):
        for method, alpha in (
            (f"distilled (k={args.top_k}, T={args.temperature:g}, alpha={args.alpha:g})", args.alpha),
            ("labels only (alpha=0)", 0.0),
        ):
            accs = []
            for seed in range(args.seeds):
                cfg = TrainConfig.from_flags(
                    store=stores["train"],
                    dataset=dataset,
                    eval_dataset="digits-eval",
                    eval_store=stores["eval"],
                    student="digits-mlp",
                    output=str(work / f"run-{setting[:4]}-{alpha}-{seed}"),
                    epochs=args.epochs,
                    temperature=args.temperature,
                    alpha=alpha,
                    workers=args.workers,
                    seed=seed,
                    overwrite=True,
                )
                accs.append(run_training(cfg)["eval_accuracy"])
                print(f"{setting} | {method} | seed {seed}: {accs[-1]:.4f}", flush=True)
            results.setdefault(setting, {})[method] = accs

    teacher = teacher_accuracy(stores["eval"])
    lines = [
        "| setting | model | held-out accuracy (mean ± sd over seeds) | per seed |",
        "|---|---|---|---|",
        f"| - | teacher (digits-cnn, 151k params) | {teacher:.4f} | - |",
    ]
    for setting, methods in results.items():
        for method, accs in methods.items():
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            lines.append(
                f"| {setting} | student digits-mlp (1.2k params), {method} | {statistics.mean(accs):.4f} ± "
                f"{sd:.4f} | {', '.join(f'{a:.4f}' for a in accs)} |"
            )
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"teacher": teacher, "results": results, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
