"""python -m jobs.train_student: distil a student from a logit store with Ray Train."""

from __future__ import annotations

import json
import sys

from jobs.cli import exit_now, run_job
from trainer.student.config import TrainConfig

# What a finished run prints of each student (eval_cross_entropy is in metrics.json, as perplexity here).
PRINTED = (
    "eval_accuracy",
    "teacher_agreement",
    "eval_perplexity",
    "eval_kl_to_teacher",
    "train_loss",
    "train_kd_loss",
    "train_ce_loss",
    "train_feature_loss",
)


def train(cfg: TrainConfig) -> None:
    from jobs.plots import training_curves
    from logitstore import StoreError
    from trainer.ray_env import set_verbose
    from trainer.student.outputs import RunOutput
    from trainer.student.run import run_training  # torch and Ray only once the arguments are sound

    set_verbose(cfg.progress.verbose)
    metrics = run_training(cfg)
    output = RunOutput(cfg.output)
    try:
        output.fetch("metrics.json")  # (an output on object storage: drawn here, then uploaded)
        output.fetch("logs")
        training_curves(output.local)
        output.publish("curves.png")
    except (OSError, ValueError, KeyError, StoreError) as exc:  # a finished run stays finished without its figure
        print(f"warning: curves.png not drawn ({exc})", file=sys.stderr)
    print(f"training complete: {cfg.output} (curves.png, logs/)", file=sys.stderr)
    for i, result in enumerate(metrics.get("students", [metrics])):
        if "variant" in result:
            print(f"student {i}: {json.dumps(result['variant'])}")
        for key in PRINTED:
            if result[key] is not None:  # e.g. no perplexity for a classifier, no agreement without --eval-store
                print(f"{key:18s} {result[key]:.4f}")
    print(f"{'wall_seconds':18s} {metrics['wall_seconds']:.1f}")
    if "startup_seconds" in metrics:
        print(f"{'startup_seconds':18s} {metrics['startup_seconds']:.1f}")
        print(f"{'epochs_seconds':18s} {metrics['epochs_seconds']:.1f}")


def main(argv: list[str] | None = None) -> int:
    return run_job(TrainConfig, train, argv, prog="python -m jobs.train_student")


if __name__ == "__main__":
    exit_now(main())
