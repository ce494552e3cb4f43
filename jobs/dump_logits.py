"""python -m jobs.dump_logits: run the teacher once and write its top-k logits into a store."""

from __future__ import annotations

import sys

from jobs.cli import run_job
from trainer.config import DumpConfig


def main(argv: list[str] | None = None) -> int:
    from trainer.dump import main_body  # heavy imports (ray, torch) only after --help and validation parse

    return run_job(DumpConfig, main_body, argv, prog="python -m jobs.dump_logits")


if __name__ == "__main__":
    sys.exit(main())
