"""The training loop each Ray Train worker runs. Reads top to bottom: build, then epochs of steps."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.losses import distillation_loss, topk_kd_loss
from trainer.models import build_model

CHECKPOINT_FILE = "model.pt"  # the student's weights (state_dict)
STATE_FILE = "train_state.pt"  # optimiser and schedule state, epoch and step: what a restart needs
HISTORY_FILE = "history.json"


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def model_inputs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["input_ids"] if "input_ids" in batch else batch["features"]


def positions(batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """One row per stored position: a classifier's rows as they are; a sequence batch flattened
    over its valid tokens, with the next token as label (-1 at a block's last token).

    -> logits [N, V], labels [N], and when the batch has them: topk_index [N, k],
    topk_logit [N, k], logsumexp_t [N], teacher_top1 [N].
    """
    keys = [k for k in ("topk_index", "topk_logit", "logsumexp_t", "rest_t", "teacher_top1", "sample_index", "sample_count") if k in batch]
    if "input_ids" not in batch:
        return {"logits": logits, "labels": batch["label"], **{k: batch[k] for k in keys}}
    ids, length = batch["input_ids"], batch["length"]
    valid = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) < length.unsqueeze(1)
    labels = torch.full_like(ids, -1)
    labels[:, :-1] = torch.where(valid[:, 1:], ids[:, 1:], -1)
    return {"logits": logits[valid], "labels": labels[valid], **{k: batch[k][valid] for k in keys}}


@torch.no_grad()
def evaluate(model: torch.nn.Module, data, batch_size: int, kl_temperature: float) -> dict[str, float | None]:
    """Accuracy and cross-entropy on labelled positions (next tokens for sequences); agreement with
    the teacher's top-1 and KL(teacher || student) at `kl_temperature` when the data carries a store."""
    model.eval()
    correct = labelled = agree = with_teacher = 0
    ce_sum = kl_sum = 0.0
    sequence = False
    for batch in data.iter_torch_batches(batch_size=batch_size):
        sequence = "input_ids" in batch
        p = positions(batch, model(model_inputs(batch)))
        pred = p["logits"].argmax(dim=-1)
        has_label = p["labels"] >= 0
        correct += int((pred[has_label] == p["labels"][has_label]).sum())
        labelled += int(has_label.sum())
        if bool(has_label.any()):
            ce_sum += float(F.cross_entropy(p["logits"][has_label].float(), p["labels"][has_label], reduction="sum"))
        if "teacher_top1" in p:
            agree += int((pred == p["teacher_top1"]).sum())
            with_teacher += int(pred.shape[0])
            kd = topk_kd_loss(p["logits"], p["topk_index"], p["topk_logit"], p["logsumexp_t"], kl_temperature, p.get("rest_t"))
            kl_sum += float(kd.sum()) / kl_temperature**2
    ce = ce_sum / labelled if labelled else None
    return {
        "eval_accuracy": correct / labelled if labelled else None,
        "eval_cross_entropy": ce,
        "eval_perplexity": math.exp(ce) if sequence and ce is not None else None,
        "teacher_agreement": agree / with_teacher if with_teacher else None,
        "eval_kl_to_teacher": kl_sum / with_teacher if with_teacher else None,
        "eval_positions": max(with_teacher, labelled),
    }


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _restore(model: torch.nn.Module) -> tuple[dict | None, list[dict]]:
    """Weights, optimiser state and history from the latest checkpoint, when this run is a restart
    (a worker died, or the same command was rerun after the driver died)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, []
    with checkpoint.as_directory() as path:
        model.load_state_dict(torch.load(os.path.join(path, CHECKPOINT_FILE), map_location="cpu", weights_only=True))
        state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)
        with open(os.path.join(path, HISTORY_FILE)) as fh:
            history = json.load(fh)
    return state, history


def _report(model, optimizer, schedule, history: list[dict], metrics: dict, *, epoch: int, step: int, checkpoint: bool) -> None:
    """ray.train.report from every worker; rank 0 attaches the checkpoint: weights (loadable with
    weights_only=True), optimiser and schedule state, and where in training it was taken."""
    if not checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        attached = None
        if ray.train.get_context().get_world_rank() == 0:
            torch.save(_unwrap(model).state_dict(), os.path.join(tmp, CHECKPOINT_FILE))
            torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                        "epoch": epoch, "step": step}, os.path.join(tmp, STATE_FILE))
            with open(os.path.join(tmp, HISTORY_FILE), "w") as fh:
                json.dump(history, fh)
            attached = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=attached)


def train_loop_per_worker(cfg: dict) -> None:
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])

    model = build_model(cfg["student"], "--student")
    state, history = _restore(model)  # before wrapping: the checkpoint holds the plain module's weights
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["epochs"])
    # (epoch, step): epochs finished, and optimiser steps already taken in the next one.
    start_epoch, skip_steps = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch, skip_steps = int(state["epoch"]), int(state["step"])
        if rank == 0:
            print(json.dumps({"resumed_from": {"epoch": start_epoch, "step": skip_steps}}))
    train_data = ray.train.get_dataset_shard("train")
    eval_data = ray.train.get_dataset_shard("eval") if cfg["has_eval"] else None
    every_steps = cfg["checkpoint_every_steps"]

    for epoch in range(start_epoch, cfg["epochs"]):
        model.train()
        epoch_start = time.perf_counter()
        totals = torch.zeros(4, dtype=torch.float64)  # loss, kd, ce (each * positions), positions
        step = 0
        batches = train_data.iter_torch_batches(
            batch_size=cfg["batch_size"],
            local_shuffle_buffer_size=4 * cfg["batch_size"],
            local_shuffle_seed=cfg["seed"] * 100_003 + epoch * 101 + rank,
        )
        # A restart inside an epoch skips as many batches as were already trained on (the epoch's
        # shuffle is a fresh one: the same number of batches, not the same rows).
        skip = skip_steps if epoch == start_epoch else 0
        for step, batch in enumerate(batches, start=1):
            if step <= skip:
                continue
            p = positions(batch, model(model_inputs(batch)))
            loss, kd, ce = distillation_loss(
                p["logits"], p["labels"], p.get("topk_index"), p.get("topk_logit"), p.get("logsumexp_t"),
                temperature=cfg["temperature"], alpha=cfg["alpha"], selection=cfg["selection"],
                sample_index=p.get("sample_index"), sample_count=p.get("sample_count"), rest_t=p.get("rest_t"),
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = p["logits"].shape[0]
            totals += torch.tensor([loss.item() * n, kd.item() * n, ce.item() * n, n], dtype=torch.float64)
            if every_steps and step % every_steps == 0:
                _report(model, optimizer, schedule, history, {"epoch": epoch, "step": step}, epoch=epoch, step=step, checkpoint=True)
        schedule.step()
        epoch_seconds = time.perf_counter() - epoch_start

        totals = _all_reduce_sum(totals)
        rows = max(totals[3].item(), 1.0)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": totals[0].item() / rows,
            "train_kd_loss": totals[1].item() / rows,
            "train_ce_loss": totals[2].item() / rows,
            "train_positions": int(totals[3].item()),
            "train_steps": step,  # optimiser steps of this worker in this epoch (skipped ones included)
            "epoch_seconds": epoch_seconds,  # this worker's training pass (data, forward, backward, step), not eval
        }
        if state is not None and epoch == start_epoch:
            # This epoch began from a restart; with skip > 0 the train_* figures cover only the steps after it.
            metrics["resumed_from"] = {"epoch": start_epoch, "step": skip_steps}
        last = epoch + 1 == cfg["epochs"]
        due = last or (cfg["eval_every"] and (epoch + 1) % cfg["eval_every"] == 0)
        if rank == 0 and eval_data is not None and due:
            metrics.update(evaluate(_unwrap(model), eval_data, cfg["eval_batch_size"], cfg["eval_temperature"]))
        history.append(metrics)
        if rank == 0:
            print(json.dumps(metrics))
        _report(model, optimizer, schedule, history, metrics, epoch=epoch + 1, step=0,
                checkpoint=last or (epoch + 1) % cfg["checkpoint_every"] == 0)
