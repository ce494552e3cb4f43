"""The chat showcase's students (README, "Showcase") from top-k, sampled and hybrid stores of equal
bytes per token, against a labels-only student and the teacher (issue 14).

    python -m bench.showcase_quality [--seeds 3] [--epochs 10] [--teacher-steps 900] [--work-dir DIR] [--json PATH]

1. The showcase's Llama chat teacher trained longer and on more chat than the README's
   (--teacher-steps 900, --teacher-chat-every 2: the README's is weaker on the chat answers than a
   labels-only student, leaving no gap to close; kept in --work-dir and reused), the chat data
   (`make-data`), the eval store (k=32).
2. A top-k store with k=32 over the train split sets the byte budget (bytes per stored position on
   disk); the draws of the `sample` (top-1 + draws) and `hybrid` (k=16 + tail draws) stores are
   calibrated to the same bytes per position on the train split too (within 3%).
3. For each seed, the README's student (`stdlib-gpt-bpe8192-student`, --epochs, batch 16, lr 0.003,
   T=1) trains from each store alone at alpha 0.5, and labels-only (alpha 0) from the top-k store;
   every run with the same seed takes the same batches in the same order (the data order depends
   on the seed and the store's shards, which the three stores share: same samples, same shard size).
4. The teacher's perplexity over the same eval positions, with plain transformers; each student's
   share of the gap it closes: (labels-only - student) / (labels-only - teacher), after the last
   epoch and at each run's best epoch (eval after every epoch; chosen on the eval set itself).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from bench.common import add_work_flags, work_dir
from bench.lm_selections import bytes_per_token, calibrate_draws
from logitstore import StoreReader
from trainer.builtin.stdlib import chat
from trainer.student.config import TrainConfig
from trainer.student.run import run_training
from trainer.teacher.config import DumpConfig
from trainer.teacher.pipeline import run_dump

STUDENT = "stdlib-gpt-bpe8192-student"
TOPK = dict(selection="topk", top_k=32)
SAMPLED = {"sample": dict(selection="sample", top_k=1), "hybrid": dict(selection="hybrid", top_k=16)}


def teacher_perplexity(teacher: Path, store: str) -> float:
    """Per-token perplexity of the teacher over a store's stored positions (the next token of each
    stored position), computed by plain transformers: the positions a student's eval scores."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher, local_files_only=True).eval()
    reader = StoreReader(store)
    nll, count = 0.0, 0
    with torch.no_grad():
        for shard in range(reader.num_shards):
            tokens = reader.read_shard(shard).tokens
            for s in range(len(tokens.offsets) - 1):
                a, b = int(tokens.offsets[s]), int(tokens.offsets[s + 1])
                ids = torch.tensor(tokens.input_ids[a:b].astype("int64"))
                mask = torch.from_numpy(tokens.loss_mask[a:b].astype(bool))[:-1]
                log_p = torch.log_softmax(model(ids[None]).logits[0, :-1].double(), dim=-1)
                picked = log_p.gather(1, ids[1:, None]).squeeze(1)
                nll -= float(picked[mask].sum())
                count += int(mask.sum())
    return math.exp(nll / count)


def print_table(rows: list[dict], teacher_ppl: float, seeds: int) -> None:
    """Mean ± sd over the seeds after the last epoch, each seed, the share of the labels-only ->
    teacher gap closed; and the same at each run's best epoch (chosen on the eval set itself:
    optimistic for every row alike)."""

    def cell(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")

    def closed(values: list[float], labels: list[float]) -> str:
        gap = statistics.mean(labels) - teacher_ppl
        return f"{(statistics.mean(labels) - statistics.mean(values)) / gap:.2f}" if gap else "-"

    print(
        f"| model | bytes per position | eval perplexity after the last epoch (mean ± sd, {seeds} seeds) | "
        "per seed | gap closed | best epoch's (mean ± sd) | gap closed |"
    )
    print("|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows):
        last, best = row["perplexities"], row["best"]
        stored = "-" if row["bytes"] is None else f"{row['bytes']:.1f}"
        each = ", ".join(f"{x:.2f}" for x in last) if len(last) > 1 else "-"
        gaps = (closed(last, rows[1]["perplexities"]), closed(best, rows[1]["best"])) if i > 1 else ("-", "-")
        row["gap_closed"], row["gap_closed_best"] = gaps
        print(f"| {row['model']} | {stored} | {cell(last)} | {each} | {gaps[0]} | {cell(best)} | {gaps[1]} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.showcase_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    # The README's teacher (300 steps, every 4th batch chat) is weaker on the chat answers than a
    # labels-only student (334 vs ~280): no gap to close. This one is the same model trained longer
    # with more chat (128.8 on the eval answers, 6.5 CPU minutes).
    parser.add_argument("--teacher-steps", type=int, default=900)
    parser.add_argument("--teacher-chat-every", type=int, default=2, help="every Nth teacher batch is chat rows")
    add_work_flags(parser)
    args = parser.parse_args(argv)
    work = work_dir(args, "showcase-quality")
    start = time.perf_counter()

    teacher = work / "chat-teacher"
    made = json.loads((teacher / "training.json").read_text()) if (teacher / "training.json").is_file() else {}
    if (made.get("steps"), made.get("chat_every")) != (args.teacher_steps, args.teacher_chat_every):
        chat.make_teacher(teacher, steps=args.teacher_steps, chat_every=args.teacher_chat_every)
    data = work / "chat"
    data.mkdir(parents=True, exist_ok=True)
    chat.write_jsonl(chat.chat_rows("train"), data / "chat-train.jsonl")
    chat.write_jsonl(chat.chat_rows("eval"), data / "chat-eval.jsonl")
    train, evaluation = str(data / "chat-train.jsonl"), str(data / "chat-eval.jsonl")

    def dump(out: Path, dataset: str, **extra) -> float:
        run_dump(DumpConfig(teacher=f"hf:{teacher}", dataset=dataset, out=str(out), overwrite=True, **extra))
        return bytes_per_token(str(out))

    eval_store = str(work / "eval")
    dump(Path(eval_store), evaluation, **TOPK)
    # Calibrated on the train split itself: the teacher has seen it, so its distributions there
    # are sharper than on held-out text and a sampled store of given draws is smaller (on the eval
    # split's calibration the sampled store came out at 70% of the top-k bytes on train).
    target = dump(work / "top-k", train, **TOPK)
    configs, calibration = {"top-k (k=32)": TOPK}, {}
    for name, extra in SAMPLED.items():
        draws, tried = calibrate_draws(
            work, extra, target, dump_eval=lambda d, e=extra: dump(work / "calibration", train, draws=d, **e)
        )
        calibration[name] = tried
        label = f"sample (top-1 + {draws} draws)" if name == "sample" else f"hybrid (k=16 + {draws} tail draws)"
        configs[label] = {**extra, "draws": draws}
    stores = {}
    for label, extra in configs.items():
        stores[label] = str(work / label.split()[0])
        if extra is not TOPK:  # (the top-k store is the target's)
            dump(Path(stores[label]), train, **extra)
        print(f"{label}: {bytes_per_token(stores[label]):.1f} B/position on the train split", flush=True)

    def student(store: str, alpha: float, tag: str, seed: int) -> float:
        cfg = TrainConfig.from_flags(
            store=store,
            eval_store=eval_store,
            student=STUDENT,
            output=str(work / f"run-{tag}-{seed}"),
            epochs=args.epochs,
            batch_size=16,
            lr=0.003,
            temperature=1.0,
            alpha=alpha,
            seed=seed,
            overwrite=True,
            eval_every=1,
        )
        curve = [e["eval_perplexity"] for e in run_training(cfg)["epochs"]]
        print(f"  {tag} seed {seed}: eval perplexity {curve[-1]:.3f} (best {min(curve):.3f})", flush=True)
        return curve

    seeds = range(args.seeds)
    teacher_ppl = teacher_perplexity(teacher, eval_store)
    rows = [{"model": "teacher (plain transformers)", "bytes": None, "curves": [[teacher_ppl]]}]
    rows.append({"model": "student, labels only (alpha=0)", "bytes": None, "curves": []})
    rows[1]["curves"] = [student(stores["top-k (k=32)"], 0.0, "labels", s) for s in seeds]
    for label, store in stores.items():
        curves = [student(store, args.alpha, label.split()[0], s) for s in seeds]
        rows.append(
            {"model": f"student, {label}, alpha={args.alpha:g}", "bytes": bytes_per_token(store), "curves": curves}
        )
    for row in rows:
        row["perplexities"] = [curve[-1] for curve in row["curves"]]  # after the last epoch
        row["best"] = [min(curve) for curve in row["curves"]]  # the best epoch's
    print_table(rows, teacher_ppl, args.seeds)
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "calibration": calibration, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
