"""The showcase's students (README, "Showcase: SmolLM2") distilled against labels alone: does KD
recover more of a real teacher, in the healing domain and out of it, at equal training tokens?

    python -m bench.showcase_quality [--seeds 3] [--train-rows 16] [--epochs 2] [--work-dir DIR] [--json PATH]

Teacher: SmolLM2-135M-Instruct (`trainer.builtin.smollm2 make-teacher`, or --teacher DIR).
Healing domain: Python's documentation (trainer.builtin.stdlib.docs): --train-rows passages of
the train topics, spread over them; held out: --eval-rows passages of the eval topics. Other
domain: the stdlib docstring chat's eval conversations (their assistant tokens), which no
student trains on.
Students: the teacher cut to --depth layers by block influence on the training passages
(`jobs.make_student`), and a from-scratch Llama (examples/smollm2-scratch-student.json).
Stores over the training passages (seq-len 256): top-k (k=64) sets the byte budget; a sampled
store (top-1 + draws) is calibrated to the same bytes per position on the first 16 passages.
Runs, per seed: labels only (alpha 0), top-k and sampled (alpha 0.5, T = 1); a seed's runs read
the same batches in the same order. Each export is then scored with plain transformers on both
held-out sets: perplexity, the teacher's recovery (teacher perplexity / student perplexity) and
the per-token KL(teacher || student) over the full vocabulary; tokens to parity: the training
positions at which a KD run's held-out docs perplexity (the trainer's eval after each epoch,
interpolated in log perplexity from the student's figure before training) first reaches the final
figure of labels-only with the same seed (mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import add_work_flags, markdown_table, run_module, work_dir, write_json
from bench.lm_selections import bytes_per_token, calibrate_draws
from logitstore import read_manifest

STUDENT_VOCAB = 49_152  # a fresh student's perplexity before training, about uniform over the vocabulary
SCRATCH = Path(__file__).resolve().parent.parent / "examples" / "smollm2-scratch-student.json"
TOPK = dict(selection="topk", top_k=64)
SAMPLE = dict(selection="sample", top_k=1)
STUDENTS = {"pruned": dict(lr=1e-4), "scratch": dict(lr=3e-3)}


def prepare_data(work: Path, train_rows: int, eval_rows: int) -> dict[str, Path]:
    """The files `make-data --docs-rows train_rows --docs-eval-rows eval_rows` writes, in `work`."""
    run_module("trainer.builtin.stdlib.chat", "make-data", "--out", str(work),
         "--docs-rows", str(train_rows), "--docs-eval-rows", str(eval_rows))  # fmt: skip
    files = {name: work / f"{name}.jsonl" for name in ("docs-train", "docs-calibration", "docs-eval", "chat-eval")}
    with open(files["docs-train"]) as src:  # the sampled store's draws are calibrated on the first 16
        files["docs-calibration"].write_text("".join(src.readlines()[:16]))
    return files


def held_out(path: Path, teacher: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, mask of the positions scored) per row, tokenised as a dump would (seq-len 256)."""
    from trainer.inputs.datasets import TextOptions, read_here

    read = read_here(str(path), text=TextOptions(seq_len=256, hf_tokenizer=str(teacher)))
    rows = []
    for i in np.argsort(read["id"], kind="stable"):
        n = int(read["length"][i])
        rows.append((read["input_ids"][i, :n], read["loss_mask"][i, : n - 1].astype(bool)))
    return rows


class Scorer:
    """Perplexity and KL(teacher || student) per scored position over one held-out set; the
    teacher's log-probabilities are computed once (fp16 in memory)."""

    def __init__(self, rows: list[tuple[np.ndarray, np.ndarray]], teacher) -> None:
        self.rows = rows
        self.teacher_logp = [self._logp(teacher, ids, mask).half() for ids, mask in rows]

    @staticmethod
    def _logp(model, ids: np.ndarray, mask: np.ndarray):
        import torch

        with torch.no_grad():
            logits = model(torch.as_tensor(ids[None].astype(np.int64)), use_cache=False).logits[0, :-1]
            return torch.log_softmax(logits.float(), dim=-1)[torch.from_numpy(mask)]

    def score(self, model) -> dict[str, float]:
        import torch

        nll = kl = 0.0
        count = 0
        for (ids, mask), teacher in zip(self.rows, self.teacher_logp):
            logp = self._logp(model, ids, mask)
            targets = torch.as_tensor(ids[1:][mask].astype(np.int64))
            nll -= float(logp.gather(1, targets[:, None]).sum())
            t = teacher.float()
            kl += float((t.exp() * (t - logp)).sum())
            count += int(mask.sum())
        return {"perplexity": math.exp(nll / count), "kl": kl / count, "positions": count}


def make_stores(work: Path, teacher: Path, files: dict[str, Path]) -> dict[str, tuple[str, float]]:
    """{"top-k": (store, B/position), "sample": ...}: the sampled store at the top-k store's bytes."""
    from trainer.teacher.config import DumpConfig
    from trainer.teacher.pipeline import run_dump

    def dump(out: Path, dataset: Path, **extra) -> float:
        if not (out / "manifest.json").is_file():
            run_dump(DumpConfig(teacher=f"hf:{teacher}", dataset=str(dataset), out=str(out), seq_len=256, **extra))
        return bytes_per_token(str(out))

    stores = {"top-k": (str(work / "store-topk"), dump(work / "store-topk", files["docs-train"], **TOPK))}
    target = dump(work / "calibration-topk", files["docs-calibration"], **TOPK)
    draws, _ = calibrate_draws(
        work,
        SAMPLE,
        target,
        dump_eval=lambda d: dump(work / f"calibration-sample-{d}", files["docs-calibration"], draws=d, **SAMPLE),
    )
    out = work / f"store-sample-{draws}"
    stores[f"sample (top-1 + {draws} draws)"] = (str(out), dump(out, files["docs-train"], draws=draws, **SAMPLE))
    return stores


def train(work: Path, store: str, student: str, kind: str, alpha: float, seed: int, args, eval_file: Path) -> dict:
    from trainer.student.config import TrainConfig
    from trainer.student.run import run_training

    output = work / f"run-{kind}-{Path(store).name}-a{alpha:g}-s{seed}"
    if not (output / "metrics.json").is_file():
        cfg = TrainConfig.from_flags(
            store=store,
            student=student,
            eval_dataset=str(eval_file),
            output=str(output),
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=STUDENTS[kind]["lr"],
            temperature=1.0,
            alpha=alpha,
            seed=seed,
            eval_every=1,
            checkpoint_every=args.epochs,
            threads_per_worker=args.threads,  # the last epoch's only (a pruned student's is ~1.2 GB)
            overwrite=True,
        )
        run_training(cfg)
        shutil.rmtree(output / "checkpoint", ignore_errors=True)  # ~1.2 GB for the pruned student: the export stays
    metrics = json.loads((output / "metrics.json").read_text())
    return {"dir": output / "student", "curve": [e["eval_perplexity"] for e in metrics["epochs"]]}


def score(export: Path, scorers: dict[str, Scorer]) -> dict[str, dict]:
    """Each domain's figures for a student's export, kept beside it (a rerun with more seeds scores
    only the new runs)."""
    from trainer.student.pruning import load_lm

    kept = export.parent / "bench-scores.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    model = load_lm(str(export))
    figures = {domain: scorer.score(model) for domain, scorer in scorers.items()}
    kept.write_text(json.dumps(figures))
    return figures


def parity_tokens(curves: list[list[float]], labels: list[list[float]], start: float, per_epoch: int) -> float | None:
    """Mean over seeds of the training positions at which a KD run's eval curve (`start` before
    training, then after each epoch) first reaches the final figure of labels-only with the same
    seed, interpolated in log perplexity between evals; None when some seed never does."""
    reached = []
    for curve, target in zip(curves, (c[-1] for c in labels)):
        points = [start, *curve]
        hit = next((e for e in range(1, len(points)) if points[e] <= target), None)
        if hit is None:
            return None
        before, after = math.log(points[hit - 1]), math.log(points[hit])
        reached.append(hit - 1 + (before - math.log(target)) / (before - after))
    return statistics.mean(reached) * per_epoch


def summarise(name: str, runs: list[dict], teacher: dict) -> dict:
    """Mean ± sd over seeds of each domain's figures, and the teacher's recovery."""
    row = {"run": name}
    for domain in ("docs", "chat"):
        ppl = [r[domain]["perplexity"] for r in runs]
        kl = [r[domain]["kl"] for r in runs]
        sd = f" ± {statistics.stdev(ppl):.2f}" if len(ppl) > 1 else ""
        row[f"{domain}_ppl"] = f"{statistics.mean(ppl):.2f}{sd}"
        row[f"{domain}_recovery"] = teacher[domain]["perplexity"] / statistics.mean(ppl)
        row[f"{domain}_kl"] = statistics.mean(kl)
        row[f"{domain}_per_seed"] = ppl
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=16, help="training passages (~250 tokens each)")
    parser.add_argument("--eval-rows", type=int, default=16, help="held-out passages")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the pruned student")
    parser.add_argument("--scratch-epochs", type=int, default=4, help="epochs of the from-scratch student")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="--threads-per-worker of the training runs")
    parser.add_argument(
        "--teacher", default=None, help="a converted SmolLM2 directory (default: convert into the work dir)"
    )
    add_work_flags(parser)
    args = parser.parse_args(argv)
    work = work_dir(args, "showcase-quality")
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    teacher = Path(args.teacher or work / "smollm2")
    if args.teacher is None:
        run_module("trainer.builtin.smollm2", "make-teacher", "--out", str(teacher))
    files = prepare_data(work, args.train_rows, args.eval_rows)
    pruned = work / f"smollm2-d{args.depth}"
    if not (pruned / "logitstore-student.json").is_file():
        run_module("jobs.make_student", "--teacher", f"hf:{teacher}", "--out", str(pruned), "--depth", str(args.depth),
             "--calibration", str(files["docs-train"]), "--overwrite")  # fmt: skip
    stores = make_stores(work, teacher, files)
    print(", ".join(f"{k}: {b:.1f} B/position" for k, (_, b) in stores.items()), flush=True)

    from trainer.student.pruning import load_lm

    teacher_model = load_lm(str(teacher))
    scorers = {d: Scorer(held_out(files[f"{d}-eval"], teacher), teacher_model) for d in ("docs", "chat")}
    teacher_figures = {d: s.score(teacher_model) for d, s in scorers.items()}
    before = {d: s.score(load_lm(str(pruned))) for d, s in scorers.items()}
    del teacher_model
    tables = {}
    for kind, student, epochs in (
        ("pruned", f"hf:{pruned}", args.epochs),
        ("scratch", f"hf-config:{SCRATCH}", args.scratch_epochs),
    ):
        start_figures = before if kind == "pruned" else None
        settings = argparse.Namespace(epochs=epochs, batch_size=args.batch_size, threads=args.threads)
        tables[kind] = student_table(work, kind, student, settings, stores, scorers, files, args.seeds)
        tables[kind]["rows"] = table_rows(tables[kind], teacher_figures, start_figures, args.depth)
        print(f"\n{kind} student, {tables[kind]['tokens']:,} training positions ({epochs} epochs), {args.seeds} seeds:")
        print(markdown_table(tables[kind]["rows"], COLUMNS))
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        write_json(args.json, {"showcase_quality": {"args": vars(args), "stores": stores, **tables}})
    return 0


def student_table(work: Path, kind: str, student: str, settings, stores, scorers, files, seeds: int) -> dict:
    """Every run of one student (labels only, then KD from each store; `seeds` each), trained and scored."""
    topk_store = stores["top-k"][0]
    variants = {"labels only (alpha 0)": (topk_store, 0.0)}
    variants.update({f"{name}, alpha 0.5": (store, 0.5) for name, (store, _) in stores.items()})
    results = {}
    for name, (store, alpha) in variants.items():
        runs = []
        for seed in range(seeds):
            run = train(work, store, student, kind, alpha, seed, settings, files["docs-eval"])
            runs.append({**run, **score(run["dir"], scorers)})
            print(f"  {kind} {name} seed {seed}: docs {runs[-1]['docs']['perplexity']:.2f}, "
                  f"chat {runs[-1]['chat']['perplexity']:.2f}", flush=True)  # fmt: skip
        results[name] = runs
    per_epoch = read_manifest(topk_store).num_positions
    return {"runs": results, "per_epoch": per_epoch, "tokens": per_epoch * settings.epochs}


def table_rows(table: dict, teacher: dict, before: dict | None, depth: int) -> list[dict]:
    """The teacher's row, the cut's before healing (`before`; None for a fresh student), each run's
    summary and its tokens to parity. The runs lose their export paths (the rows go to JSON)."""
    results = table["runs"]
    labels = [r["curve"] for r in results["labels only (alpha 0)"]]
    start = before["docs"]["perplexity"] if before else float(STUDENT_VOCAB)  # a fresh student: about uniform
    rows = [summarise("teacher", [teacher], teacher)]
    if before:
        rows.append(summarise(f"cut to {depth} layers, before healing", [before], teacher))
    for name, runs in results.items():
        rows.append(summarise(name, runs, teacher))
        if name != "labels only (alpha 0)":
            rows[-1]["parity_tokens"] = parity_tokens([r["curve"] for r in runs], labels, start, table["per_epoch"])
    table["runs"] = {n: [{k: v for k, v in r.items() if k != "dir"} for r in rs] for n, rs in results.items()}
    return rows


COLUMNS = [
    ("run", "{}"),
    ("docs_ppl", "{}"),
    ("docs_recovery", "{:.2f}"),
    ("docs_kl", "{:.3f}"),
    ("chat_ppl", "{}"),
    ("chat_recovery", "{:.2f}"),
    ("chat_kl", "{:.3f}"),
    ("parity_tokens", "{:,.0f}"),
]


if __name__ == "__main__":
    sys.exit(main())
