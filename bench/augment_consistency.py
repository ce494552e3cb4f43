"""Augmentation and cached teacher logits on digits: no augmentation, inconsistent, consistent.

    python -m bench.augment_consistency [--seeds 3] [--epochs 30] [--views 16] [--json PATH]

Three ways to distil from a teacher pass made once (held-out accuracy, mean of seeds):
  no augmentation   the plain store (k=5), the student sees the images as they are;
  inconsistent      the same store, the student's images augmented afresh each epoch
                    (digits-shift-rotate) while the targets stay the un-augmented image's;
  consistent views  a store of V augmented views per image (dump_logits --views V), the student
                    replays the teacher's augmentation from the stored seeds, one view per epoch.
The teacher runs twice (the plain store and the views store) and never during training.
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import add_work_flags, digits_stores, markdown_table, work_dir, write_json
from trainer.student.config import TrainConfig
from trainer.student.run import run_training
from trainer.teacher.config import DumpConfig
from trainer.teacher.pipeline import run_dump

AUGMENT = "digits-shift-rotate"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.augment_consistency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--dataset", default="digits-fewlabels", help="training labels: digits or digits-fewlabels")
    parser.add_argument("--student", default="digits-mlp")
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--temperature", type=float, default=4.0)
    add_work_flags(parser)
    args = parser.parse_args(argv)

    work = work_dir(args, "augment-consistency")
    stores = digits_stores(work)
    stores["plain"] = stores.pop("train")
    stores["views"] = str(work / "store-views")
    run_dump(
        DumpConfig(
            teacher="digits-cnn",
            dataset="digits",
            out=stores["views"],
            views=args.views,
            augment=AUGMENT,
            overwrite=True,
        )
    )

    methods = [
        ("no augmentation", stores["plain"], ""),
        ("inconsistent (augmented student, un-augmented targets)", stores["plain"], AUGMENT),
        (f"consistent views (V={args.views}, seeds replayed)", stores["views"], ""),
    ]
    rows = []
    for name, store, augment in methods:
        accs, agreement = [], []
        for seed in range(args.seeds):
            cfg = TrainConfig.from_flags(
                store=store,
                dataset=args.dataset,
                eval_dataset="digits-eval",
                eval_store=stores["eval"],
                student=args.student,
                output=str(work / f"run-{len(rows)}-{seed}"),
                epochs=args.epochs,
                temperature=args.temperature,
                alpha=args.alpha,
                augment=augment,
                seed=seed,
                overwrite=True,
            )
            metrics = run_training(cfg)
            accs.append(metrics["eval_accuracy"])
            agreement.append(metrics["teacher_agreement"])
            print(f"{name}, seed {seed}: eval_accuracy {accs[-1]:.4f}", flush=True)
        rows.append(
            {
                "method": name,
                "mean": statistics.mean(accs),
                "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "agreement": statistics.mean(agreement),
                "seeds": ", ".join(f"{a:.4f}" for a in accs),
            }
        )
    print(
        f"\n{args.student} on {args.dataset}, k=5, T={args.temperature:g}, alpha={args.alpha:g}, "
        f"{args.epochs} epochs, {args.seeds} seeds:\n"
    )
    print(
        markdown_table(
            rows, [("method", "{}"), ("mean", "{:.4f}"), ("sd", "{:.4f}"), ("agreement", "{:.4f}"), ("seeds", "{}")]
        )
    )
    if args.json:
        write_json(args.json, {"augment_consistency": {"args": vars(args), "rows": rows}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
