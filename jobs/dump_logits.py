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
        f"speed     {m.num_samples / result.seconds:.1f} samples/s ({result.seconds:.1f} s){resumed}",
    ]


def dump(cfg: DumpConfig) -> None:
    from trainer.ray_env import set_verbose
    from trainer.teacher.pipeline import run_dump  # torch and Ray only once the arguments are sound

    set_verbose(cfg.verbose)
    result = run_dump(cfg)
    print(f"dump complete: {cfg.out}", file=sys.stderr)
    print("\n".join(summary_lines(result)))


def main(argv: list[str] | None = None) -> int:
    return run_job(DumpConfig, dump, argv, prog="python -m jobs.dump_logits", remedies=DUMP_REMEDIES)


if __name__ == "__main__":
    exit_now(main())
