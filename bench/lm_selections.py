"""LM example: students distilled from top-k, sampled and hybrid stores of about equal bytes per token.

    python -m bench.lm_selections [--epochs 2] [--json PATH]

One teacher (stdlib-gpt), three stores over stdlib-small sized to similar raw bytes per
token (top-k k=32: 32 x (2 B index + 4 B logit); sample: top-1 + 46 draws x (2 B id + 2 B count);
hybrid: k=16 + 24 draws), one eval store; then the same student trained labels-only and from each
store. Prints bytes per token on disk and eval perplexity (byte-level) of each, next to the teacher's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from logitstore import read_manifest
from trainer.config import DumpConfig, TrainConfig
from trainer.dump import run_dump
from trainer.lm import example
from trainer.models import build_model
from trainer.train import run_training

STORES = {
    "top-k (k=32)": dict(selection="topk", top_k=32),
    "sample (top-1 + 46 draws)": dict(selection="sample", top_k=1, draws=46),
    "hybrid (k=16 + 24 tail draws)": dict(selection="hybrid", top_k=16, draws=24),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_selections", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lm-selections-"))
    train, evaluation = "stdlib-small", "stdlib-small-eval"

    eval_store = str(work / "eval")
    run_dump(DumpConfig(teacher="stdlib-gpt", dataset=evaluation, out=eval_store, top_k=16, overwrite=True))
    rows = [("teacher stdlib-gpt", None, example.perplexity(build_model("stdlib-gpt")))]
    stores = {}
    for name, extra in STORES.items():
        stores[name] = str(work / name.split()[0])
        run_dump(DumpConfig(teacher="stdlib-gpt", dataset=train, out=stores[name], overwrite=True, **extra))

    def student(store: str, alpha: float, tag: str) -> float:
        cfg = TrainConfig(store=store, dataset=train, eval_dataset=evaluation, eval_store=eval_store,
                          student="stdlib-gpt-student", output=str(work / f"run-{tag}"), epochs=args.epochs,
                          batch_size=32, lr=0.003, temperature=1.0, alpha=alpha, overwrite=True)
        return run_training(cfg)["eval_perplexity"]

    rows.append(("student, labels only (alpha=0)", None, student(stores["top-k (k=32)"], 0.0, "labels")))
    for name, store in stores.items():
        m = read_manifest(store)
        rows.append((f"student, {name}, alpha={args.alpha:g}", m.num_bytes / m.num_positions, student(store, args.alpha, name.split()[0])))
        print(rows[-1], flush=True)

    lines = ["| model | store bytes per token | eval perplexity |", "|---|---|---|"]
    lines += [f"| {name} | {'-' if b is None else f'{b:.1f}'} | {ppl:.3f} |" for name, b, ppl in rows]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
