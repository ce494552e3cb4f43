"""python -m jobs.make_student: a student cut from its teacher by depth, for --student hf:DIR."""

from __future__ import annotations

from jobs.cli import exit_now, run_job
from trainer.student.prune_config import MakeStudentConfig


def make(cfg: MakeStudentConfig) -> None:
    from trainer.student.pruning import make_student  # torch only once the arguments are sound

    made = make_student(cfg)
    kept = ",".join(map(str, made.kept))
    print(
        f"student   {len(made.kept)} of the teacher's {made.teacher_layers} layers ({kept}), "
        f"{made.parameters / 1e6:.1f}M of {made.teacher_parameters / 1e6:.1f}M parameters"
    )
    if made.perplexity:
        p = made.perplexity
        print(f"calibration perplexity: teacher {p['teacher']:.2f}, student before healing {p['student']:.2f}")
    print(f"saved     {made.out} in {made.seconds:.0f} s: train it with --student hf:{made.out}")


def main(argv: list[str] | None = None) -> int:
    return run_job(MakeStudentConfig, make, argv, prog="python -m jobs.make_student")


if __name__ == "__main__":
    exit_now(main())
