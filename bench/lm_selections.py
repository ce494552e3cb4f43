"""LM example: students distilled from top-k, sampled and hybrid stores of equal bytes per token.

    python -m bench.lm_selections [--seeds 3] [--epochs 2] [--json PATH]

One teacher (stdlib-gpt, byte-level), the training text stdlib-small, eval text stdlib-small-eval.
1. A top-k store with k=32 sets the byte budget (bytes per token on disk, compressed).
2. The number of draws of the `sample` store (top-1 + draws) and of the `hybrid` store (k=16 head
   + tail draws) is calibrated on the eval text so that their bytes per token match the top-k
   store's there (secant steps on log bytes vs log draws); then all three are dumped on the
   training text and their real bytes per token reported.
3. The same student is trained labels-only and from each store, for each seed; eval perplexity
   (per byte) mean +- sd, next to the teacher's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from bench.common import add_work_flags, work_dir
from logitstore import read_manifest
from trainer.builtin.stdlib import example
from trainer.inputs.models import build_model
from trainer.student.config import TrainConfig
from trainer.student.run import run_training
from trainer.teacher.config import DumpConfig
from trainer.teacher.pipeline import run_dump

TRAIN, EVAL = "stdlib-small", "stdlib-small-eval"
TOPK = dict(selection="topk", top_k=32)
SAMPLED = {"sample": dict(selection="sample", top_k=1), "hybrid": dict(selection="hybrid", top_k=16)}


def bytes_per_token(store: str) -> float:
    m = read_manifest(store)
    return m.num_bytes / m.num_positions


def dump(out: Path, dataset: str, **extra) -> float:
    run_dump(DumpConfig(teacher="stdlib-gpt", dataset=dataset, out=str(out), overwrite=True, **extra))
    return bytes_per_token(str(out))


def calibrate_draws(
    work: Path, extra: dict, target: float, tolerance: float = 0.03, steps: int = 8, dump_eval=None
) -> tuple[int, list]:
    """Draws whose store on the eval text has `target` bytes per token (within `tolerance`);
    `dump_eval(draws)` dumps such a store and returns its bytes per token (default: this bench's)."""
    tried: dict[int, float] = {}
    dump_eval = dump_eval or (lambda draws: dump(work / "calibration", EVAL, draws=draws, **extra))

    def measure(draws: int) -> float:
        if draws not in tried:
            tried[draws] = dump_eval(draws)
            print(
                f"  calibrate {extra['selection']}: draws={draws} -> {tried[draws]:.1f} B/token (target {target:.1f})",
                flush=True,
            )
        return tried[draws]

    a, b = 16, 256
    for _ in range(steps):
        fa, fb = math.log(measure(a)), math.log(measure(b))
        if abs(measure(b) / target - 1) <= tolerance:
            return b, sorted(tried.items())
        slope = (fb - fa) / (math.log(b) - math.log(a)) if a != b else 0.0
        if slope <= 1e-3:  # flat: step by a factor of 4 towards the target
            nxt = b * 4 if measure(b) < target else max(1, b // 4)
        else:
            nxt = round(math.exp(math.log(b) + (math.log(target) - fb) / slope))
        a, b = b, int(min(65535, max(1, nxt)))
    best = min(tried, key=lambda d: abs(tried[d] / target - 1))
    return best, sorted(tried.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lm_selections", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.5)
    add_work_flags(parser)
    args = parser.parse_args(argv)
    work = work_dir(args, "lm-selections")
    start = time.perf_counter()

    eval_store = str(work / "eval")
    run_dump(DumpConfig(teacher="stdlib-gpt", dataset=EVAL, out=eval_store, top_k=16, overwrite=True))
    target = dump(work / "calibration-topk", EVAL, **TOPK)
    configs = {"top-k (k=32)": TOPK}
    calibration = {}
    for name, extra in SAMPLED.items():
        draws, tried = calibrate_draws(work, extra, target)
        calibration[name] = tried
        label = f"sample (top-1 + {draws} draws)" if name == "sample" else f"hybrid (k=16 + {draws} tail draws)"
        configs[label] = {**extra, "draws": draws}

    stores = {}
    for label, extra in configs.items():
        stores[label] = str(work / label.split()[0])
        dump(Path(stores[label]), TRAIN, **extra)
        print(f"{label}: {bytes_per_token(stores[label]):.1f} B/token on the training text", flush=True)

    def student(store: str, alpha: float, tag: str, seed: int) -> float:
        cfg = TrainConfig.from_flags(
            store=store,
            dataset=TRAIN,
            eval_dataset=EVAL,
            eval_store=eval_store,
            student="stdlib-gpt-student",
            output=str(work / f"run-{tag}-{seed}"),
            epochs=args.epochs,
            batch_size=32,
            lr=0.003,
            temperature=1.0,
            alpha=alpha,
            seed=seed,
            overwrite=True,
        )
        ppl = run_training(cfg)["eval_perplexity"]
        print(f"  {tag} seed {seed}: eval perplexity {ppl:.3f}", flush=True)
        return ppl

    seeds = range(args.seeds)
    rows = [
        {
            "model": "teacher stdlib-gpt",
            "bytes_per_token": None,
            "perplexities": [example.perplexity(build_model("stdlib-gpt"))],
        }
    ]
    rows.append(
        {
            "model": "student, labels only (alpha=0)",
            "bytes_per_token": None,
            "perplexities": [student(stores["top-k (k=32)"], 0.0, "labels", s) for s in seeds],
        }
    )
    for label, store in stores.items():
        rows.append(
            {
                "model": f"student, {label}, alpha={args.alpha:g}",
                "bytes_per_token": bytes_per_token(store),
                "perplexities": [student(store, args.alpha, label.split()[0], s) for s in seeds],
            }
        )

    lines = [f"| model | store bytes per token | eval perplexity (mean ± sd, {args.seeds} seeds) |", "|---|---|---|"]
    for row in rows:
        p = row["perplexities"]
        spread = f" ± {statistics.stdev(p):.3f}" if len(p) > 1 else ""
        stored = "-" if row["bytes_per_token"] is None else f"{row['bytes_per_token']:.1f}"
        lines.append(f"| {row['model']} | {stored} | {statistics.mean(p):.3f}{spread} |")
    print("\n".join(lines))
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "calibration": calibration, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
