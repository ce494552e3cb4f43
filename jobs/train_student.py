"""python -m jobs.train_student: distil a student from a logit store with Ray Train."""

from __future__ import annotations

import sys

from jobs.cli import run_job
from trainer.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    from trainer.train import main_body

    return run_job(TrainConfig, main_body, argv, prog="python -m jobs.train_student")


if __name__ == "__main__":
    sys.exit(main())
