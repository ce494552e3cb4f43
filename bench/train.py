"""Training from the store: epoch cost against labels only, online vs offline KD, 1 vs 2 workers.

    python -m bench.train [--quick] [--json PATH]

The LM example: teacher stdlib-gpt (byte-level), student stdlib-gpt-student, over stdlib-small
(--quick, for CI: a briefly trained teacher over stdlib-small-eval). Measured side by side in one run:
  dump                 `jobs.dump_logits` once (k=64, delta/logq8, zarr; the local Ray cluster is
                       started before, not counted)
  store vs labels      `jobs.train_student` (Ray Train, 1 worker) from the store (alpha 0.9) and on
                       labels only (alpha 0: the store is never read); median epoch_seconds
  2 workers vs 1       the same store run with 2 workers; epoch_seconds(1) / epoch_seconds(2)
  online vs offline    one process, the same batches and student step: online KD runs the teacher
                       on every batch, offline KD reads the store. 8 students x E epochs:
                       online = 8 E t_online; offline = t_dump + 8 E t_offline (t: one measured epoch)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import markdown_table, quick_teacher, write_json
from logitstore import StoreReader
from trainer.builtin.stdlib import example
from trainer.builtin.stdlib.gpt import GPT
from trainer.inputs.datasets import TEXT_PARTS, TextOptions, text_part
from trainer.ray_env import ensure_ray
from trainer.student.config import TrainConfig
from trainer.student.losses import distillation_loss
from trainer.student.run import run_training
from trainer.student.targets import TeacherTargets
from trainer.teacher.config import DumpConfig
from trainer.teacher.pipeline import run_dump

TEACHER, STUDENT = "stdlib-gpt", "stdlib-gpt-student"
STUDENTS = 8
BATCH = 64  # blocks of 128 tokens per step
TEMPERATURE = 2.0


def dump_store(dataset: str, out: Path) -> float:
    cfg = DumpConfig(
        teacher=TEACHER,
        dataset=dataset,
        out=str(out),
        top_k=64,
        index_codec="delta",
        value_codec="logq",
        value_bits=8,
        shard_size=64,
        batch_size=32,
        threads_per_worker=os.cpu_count() or 1,  # the dump once, as fast as this machine goes
    )
    return run_dump(cfg).seconds


def train_epochs(store: Path, dataset: str, out: Path, *, alpha: float, workers: int, epochs: int) -> list[float]:
    cfg = TrainConfig.from_flags(
        store=str(store),
        dataset=dataset,
        student=STUDENT,
        output=str(out),
        epochs=epochs,
        batch_size=BATCH // workers,
        lr=3e-3,
        temperature=TEMPERATURE,
        alpha=alpha,
        workers=workers,
        cpus_per_worker=0.5 if workers > 1 else 1.0,
    )
    run_training(cfg)
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    return [h["epoch_seconds"] for h in history]


def blocks(dataset: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    parts = [text_part(dataset, p, TextOptions()) for p in range(TEXT_PARTS)]
    ids = np.concatenate([p["id"] for p in parts])
    return (
        torch.from_numpy(np.concatenate([p["input_ids"] for p in parts])),
        torch.from_numpy(np.concatenate([p["length"] for p in parts])),
        ids,
    )


def one_epoch(mode: str, dataset: str, store: Path, teacher: torch.nn.Module) -> float:
    """One epoch of one student in this process: online (teacher per batch) or offline (the store)."""
    ids, lengths, sample_ids = blocks(dataset)
    torch.manual_seed(0)
    student = GPT(example.STUDENT)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    reader = StoreReader(store, cache_shards=2)
    r = reader.manifest.temperature_index(TEMPERATURE)
    start = time.perf_counter()
    for s in range(0, ids.shape[0], BATCH):
        x, n = ids[s : s + BATCH], lengths[s : s + BATCH]
        valid = torch.arange(x.shape[1]) < n.unsqueeze(1)
        if mode == "online":
            with torch.inference_mode():
                z = teacher(x)[valid].float()
            values, index = z.topk(64, dim=-1)
            lse, rest = torch.logsumexp(z / TEMPERATURE, dim=-1), None
        else:
            d = reader.lookup(sample_ids[s : s + BATCH])
            index, values = torch.from_numpy(d.topk_index.astype(np.int64)), torch.from_numpy(d.topk_logit)
            lse, rest = torch.from_numpy(d.logsumexp[:, r]), torch.from_numpy(d.extras["rest_mass"][:, r])
        logits = student(x)[valid]
        labels = torch.full_like(x, -1)
        labels[:, :-1] = torch.where(valid[:, 1:], x[:, 1:], -1)
        targets = TeacherTargets.exact(index, values, lse, TEMPERATURE, rest)
        loss, _, _ = distillation_loss(logits, labels[valid], targets, temperature=TEMPERATURE, alpha=0.9)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI: a briefly trained teacher over the small eval text, 1 epoch"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs per student (default 3; --quick 1)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 3)
    dataset = "stdlib-small-eval" if args.quick else "stdlib-small"
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        with quick_teacher(TEACHER, work / "cache", enabled=args.quick):
            teacher = example.load_teacher(TEACHER)
            ensure_ray()
            torch.set_num_threads(os.cpu_count() or 1)
            store = work / "store"
            dump_s = dump_store(dataset, store)
            runs = {
                "store, 1 worker": train_epochs(store, dataset, work / "t1", alpha=0.9, workers=1, epochs=epochs),
                "labels only, 1 worker": train_epochs(store, dataset, work / "l1", alpha=0.0, workers=1, epochs=epochs),
                "store, 2 workers": train_epochs(store, dataset, work / "t2", alpha=0.9, workers=2, epochs=epochs),
            }
            # Epoch 1 includes start-up (dataset planning, first shard reads): the median of the rest when there are 2+.
            epoch_s = {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in runs.items()}
            online_s, offline_s = (
                one_epoch("online", dataset, store, teacher),
                one_epoch("offline", dataset, store, teacher),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    online_8 = STUDENTS * epochs * online_s
    offline_8 = dump_s + STUDENTS * epochs * offline_s
    figures = {
        "store_vs_labels_epoch": epoch_s["store, 1 worker"] / epoch_s["labels only, 1 worker"],
        "online_vs_offline_8": online_8 / offline_8,
        "scaling_train_2v1": epoch_s["store, 1 worker"] / epoch_s["store, 2 workers"],
    }
    rows = [{"run": k, "epoch_seconds": v, "epochs": len(runs[k])} for k, v in epoch_s.items()]
    rows += [
        {"run": "online KD, one epoch in-process", "epoch_seconds": online_s, "epochs": 1},
        {"run": "offline KD from the store, one epoch in-process", "epoch_seconds": offline_s, "epochs": 1},
        {"run": "dump (once)", "epoch_seconds": dump_s, "epochs": None},
    ]
    print(f"\nTraining {STUDENT} from a {TEACHER} store over {dataset}, batch {BATCH} blocks, T={TEMPERATURE:g}\n")
    print(markdown_table(rows, [("run", "{}"), ("epoch_seconds", "{:.2f}"), ("epochs", "{}")]))
    print(
        f"\n{STUDENTS} students x {epochs} epochs: online {online_8:.0f} s, offline {offline_8:.0f} s (dump "
        f"{dump_s:.0f} s)"
    )
    print("  ".join(f"{k} = {v:.3f}" for k, v in figures.items()))
    if args.json:
        write_json(
            args.json,
            {
                **figures,
                "train": {
                    "dataset": dataset,
                    "epochs": epochs,
                    "quick": args.quick,
                    "rows": rows,
                    "online_8_seconds": online_8,
                    "offline_8_seconds": offline_8,
                },
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
