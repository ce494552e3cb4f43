"""python -m jobs.sweep: sweep student hyper-parameters over one logit store with Ray Tune."""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.cli import exit_now, run_job
from trainer.student.config import VARIANT_FIELDS
from trainer.student.sweep import SweepConfig


def sweep(cfg: SweepConfig) -> None:
    from jobs.plots import sweep_plot
    from trainer.ray_env import set_verbose
    from trainer.student.outputs import RunOutput, join_output
    from trainer.student.sweep import run_sweep  # torch and Ray only once the arguments are sound

    set_verbose(cfg.train.progress.verbose)

    def draw(summary: dict, path: Path) -> None:
        sweep_plot(summary["rows"], summary["swept"], cfg.search.metric, summary["best"], path)

    summary = run_sweep(cfg, draw)
    best, output = summary["best"], RunOutput(cfg.output)
    print(f"sweep complete: {cfg.output}", file=sys.stderr)
    print(output.read_text("results.md"), end="")
    settings = ", ".join(f"{k}={best[k]}" for k in VARIANT_FIELDS if k in best)
    print(
        f"best: trial {best['trial']} ({settings}): {cfg.search.metric} {best[cfg.search.metric]:.4f}; weights in "
        f"{join_output(cfg.output, 'best/model.pt')}"
    )
    print(
        f"{summary['trials']} students in {summary['runs']} Ray Train runs, {summary['wall_seconds']:.1f} s; "
        "the teacher never ran"
    )


def main(argv: list[str] | None = None) -> int:
    return run_job(SweepConfig, sweep, argv, prog="python -m jobs.sweep")


if __name__ == "__main__":
    exit_now(main())
