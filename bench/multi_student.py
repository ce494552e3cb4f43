"""K students from one read of the store vs K separate Ray Train runs, on digits.

    python -m bench.multi_student [--students 4] [--epochs 10] [--json PATH]

One teacher pass (train and eval stores); then the same K students (T and alpha varied, the same
seed) trained once as K separate `train_student` runs and once as one run with --variants, all in
one Ray session. Prints each student's metrics both ways (they must be equal: the same seed gives
the same init and data order) and the wall-time ratio of K runs to one.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import add_work_flags, digits_stores, markdown_table, work_dir, write_json
from trainer.student.config import TrainConfig
from trainer.student.run import run_training

# (temperature, alpha, loss) of up to 8 students: the settings a small sweep would try.
SETTINGS = [
    (4.0, 0.9, "kl"),
    (2.0, 0.9, "kl"),
    (4.0, 0.5, "kl"),
    (4.0, 0.9, "jsd"),
    (1.0, 0.9, "kl"),
    (2.0, 0.5, "reverse-kl"),
    (4.0, 1.0, "kl"),
    (2.0, 0.9, "jsd"),
]
COMPARED = ("eval_accuracy", "teacher_agreement", "eval_kl_to_teacher", "train_loss")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.multi_student", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--students", type=int, default=4, choices=range(1, len(SETTINGS) + 1))
    parser.add_argument("--epochs", type=int, default=10)
    add_work_flags(parser)
    args = parser.parse_args(argv)

    work = work_dir(args, "multi-student")
    stores = digits_stores(work)
    base = dict(
        store=stores["train"],
        dataset="digits-fewlabels",
        eval_dataset="digits-eval",
        eval_store=stores["eval"],
        student="digits-mlp",
        epochs=args.epochs,
        overwrite=True,
    )
    settings = [dict(temperature=t, alpha=a, loss=loss) for t, a, loss in SETTINGS[: args.students]]

    start = time.perf_counter()
    alone = [
        run_training(TrainConfig.from_flags(**base, **s, output=str(work / f"alone-{i}")))
        for i, s in enumerate(settings)
    ]
    separate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    together = run_training(
        TrainConfig.from_flags(**base, variants=json.dumps(settings), output=str(work / "together"))
    )
    one_run_seconds = time.perf_counter() - start

    rows = []
    for s, a, t in zip(settings, alone, together["students"]):
        rows.append(
            {
                **s,
                **{f"{k} (alone)": a[k] for k in COMPARED},
                **{f"{k} (together)": t[k] for k in COMPARED},
                "equal": all(a[k] == t[k] for k in COMPARED),
            }
        )
    columns = [("temperature", "{:g}"), ("alpha", "{:g}"), ("loss", "{}")]
    columns += [(f"eval_accuracy ({w})", "{:.4f}") for w in ("alone", "together")]
    columns += [(f"eval_kl_to_teacher ({w})", "{:.4f}") for w in ("alone", "together")]
    columns += [("equal", "{}")]
    print(markdown_table(rows, columns))
    ratio = separate_seconds / one_run_seconds
    print(
        f"\n{args.students} separate runs: {separate_seconds:.1f} s; one run of {args.students} students: "
        f"{one_run_seconds:.1f} s; ratio {ratio:.2f}x ({args.epochs} epochs each)"
    )
    print(f"metrics equal for {sum(r['equal'] for r in rows)} of {len(rows)} students")
    if args.json:
        write_json(
            args.json,
            {
                "multi_student": {
                    "students": args.students,
                    "epochs": args.epochs,
                    "separate_seconds": separate_seconds,
                    "one_run_seconds": one_run_seconds,
                    "ratio": ratio,
                    "rows": rows,
                }
            },
        )
    return 0 if all(r["equal"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
