"""The training loop each Ray Train worker runs. Reads top to bottom: build, then epochs of steps."""

from __future__ import annotations

import json
import os
import tempfile

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from trainer.losses import distillation_loss
from trainer.models import build_model

CHECKPOINT_FILE = "model.pt"
HISTORY_FILE = "history.json"


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


@torch.no_grad()
def evaluate(model: torch.nn.Module, data, batch_size: int) -> dict[str, float | None]:
    """Accuracy on labelled rows; agreement with the teacher's top-1 when the data carries it."""
    model.eval()
    correct = labelled = agree = rows = 0
    has_teacher = False
    for batch in data.iter_torch_batches(batch_size=batch_size):
        pred = model(batch["features"]).argmax(dim=1)
        has_label = batch["label"] >= 0
        correct += int((pred[has_label] == batch["label"][has_label]).sum())
        labelled += int(has_label.sum())
        if "teacher_top1" in batch:
            has_teacher = True
            agree += int((pred == batch["teacher_top1"]).sum())
        rows += int(pred.shape[0])
    return {
        "eval_accuracy": correct / labelled if labelled else None,
        "teacher_agreement": agree / rows if has_teacher and rows else None,
        "eval_rows": rows,
    }


def train_loop_per_worker(cfg: dict) -> None:
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])

    model = build_model(cfg["student"], "--student")
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["epochs"])
    train_data = ray.train.get_dataset_shard("train")
    eval_data = ray.train.get_dataset_shard("eval") if cfg["has_eval"] else None
    history: list[dict] = []

    for epoch in range(cfg["epochs"]):
        model.train()
        totals = torch.zeros(4, dtype=torch.float64)  # loss, kd, ce (each * rows), rows
        batches = train_data.iter_torch_batches(
            batch_size=cfg["batch_size"],
            local_shuffle_buffer_size=4 * cfg["batch_size"],
            local_shuffle_seed=cfg["seed"] * 100_003 + epoch * 101 + rank,
        )
        for batch in batches:
            logits = model(batch["features"])
            loss, kd, ce = distillation_loss(
                logits, batch["label"], batch["topk_index"], batch["topk_logit"], batch["logsumexp_t"],
                temperature=cfg["temperature"], alpha=cfg["alpha"],
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = logits.shape[0]
            totals += torch.tensor([loss.item() * n, kd.item() * n, ce.item() * n, n], dtype=torch.float64)
        schedule.step()

        totals = _all_reduce_sum(totals)
        rows = max(totals[3].item(), 1.0)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": totals[0].item() / rows,
            "train_kd_loss": totals[1].item() / rows,
            "train_ce_loss": totals[2].item() / rows,
            "train_rows": int(totals[3].item()),
        }
        last = epoch + 1 == cfg["epochs"]
        due = last or (cfg["eval_every"] and (epoch + 1) % cfg["eval_every"] == 0)
        if rank == 0 and eval_data is not None and due:
            metrics.update(evaluate(model.module if hasattr(model, "module") else model, eval_data, 1024))
        history.append(metrics)
        if rank == 0:
            print(json.dumps(metrics))

        if not (last or (epoch + 1) % cfg["checkpoint_every"] == 0):
            ray.train.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                state = (model.module if hasattr(model, "module") else model).state_dict()
                torch.save(state, os.path.join(tmp, CHECKPOINT_FILE))
                with open(os.path.join(tmp, HISTORY_FILE), "w") as fh:
                    json.dump(history, fh)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
