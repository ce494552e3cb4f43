"""python -m jobs.sweep: sweep student hyper-parameters over one logit store with Ray Tune."""

from __future__ import annotations

import sys

from jobs.cli import run_job
from trainer.sweep import SweepConfig


def main(argv: list[str] | None = None) -> int:
    from trainer.sweep import main_body

    return run_job(SweepConfig, main_body, argv, prog="python -m jobs.sweep")


if __name__ == "__main__":
    sys.exit(main())
