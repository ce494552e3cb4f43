"""python -m jobs.dump_logits: run the teacher once and write its top-k logits into a store."""

from __future__ import annotations

import sys

from jobs.cli import exit_now, run_job
from trainer.teacher.config import DUMP_REMEDIES, DumpConfig


def summary_lines(result) -> list[str]:
    """What a finished dump prints: the store, its contents, bytes and speed."""
    m = result.manifest
    entries = m.num_positions * (m.top_k + m.draws)
    s = m.selection
    sampled = f", {s.kind} +{m.draws} draws at T={s.temperature:g}" if m.draws else ""
    if s.adaptive:
        sampled = f" (adaptive: the fewest holding p={s.top_p:g} at T=1, at least {s.min_k})"
    per = (
        f"{m.num_bytes / max(m.num_positions, 1):.2f} bytes per position (inspect_store gives the mean k)"
        if s.adaptive
        else f"{m.num_bytes / entries:.2f} bytes per stored (index, value) entry"
    )
    resumed = (
        f"; resumed: {result.resumed_shards} of {len(m.shards)} shards were already complete"
        if result.resumed_shards
        else ""
    )
    return [
        f"store     {m.backend} store, k={m.top_k} of {m.vocab_size} classes{sampled}, "
        f"T={','.join(f'{t:g}' for t in m.temperatures)}",
        f"samples   {m.num_samples} ({m.num_positions} positions) in {len(m.shards)} shards",
        f"bytes     {m.num_bytes} on disk, {per}",
        f"speed     {_speed(result)}{resumed}",
    ]


def _speed(result) -> str:
    """Samples (and tokens) per second of the whole job, and how much of it the teacher pass took."""
    seconds = max(result.seconds, 1e-9)
    tokens = f", {result.tokens_read / seconds:,.0f} tokens/s" if result.tokens_read else ""
    teacher = f", of which {result.teacher_seconds:.1f} s scoring and writing" if result.teacher_seconds else ""
    return f"{result.manifest.num_samples / seconds:.1f} samples/s{tokens} ({result.seconds:.1f} s{teacher})"


def dump(cfg: DumpConfig) -> None:
    from trainer.teacher.rerun import answer_without_ray  # torch only once the arguments are sound

    result = answer_without_ray(cfg)  # a complete store of this dump: no Ray to start
    if result is None:
        from trainer.ray_env import set_verbose
        from trainer.teacher.pipeline import run_dump

        set_verbose(cfg.verbose)
        result = run_dump(cfg, rerun_checked=True)  # not hashing the data and the teacher twice
    print(f"dump complete: {cfg.out}", file=sys.stderr)
    print("\n".join(summary_lines(result)))


def main(argv: list[str] | None = None) -> int:
    return run_job(DumpConfig, dump, argv, prog="python -m jobs.dump_logits", remedies=DUMP_REMEDIES)


if __name__ == "__main__":
    exit_now(main())
