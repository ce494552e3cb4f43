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

from trainer.augment import derive_seeds, resolve_augment
from trainer.losses import distillation_loss, topk_kd_loss
from trainer.models import build_model

CHECKPOINT_FILE = "model.pt"  # the student's weights (state_dict)
STATE_FILE = "train_state.pt"  # optimiser and schedule state, epoch and step: what a restart needs
HISTORY_FILE = "history.json"
# What a store of views carries per view: [B, V, ...] in the batch, one view picked per sample.
VIEW_KEYS = ("topk_index", "topk_logit", "logsumexp_t", "rest_t", "teacher_top1", "view_seed")


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def model_inputs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["input_ids"] if "input_ids" in batch else batch["features"]


def positions(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """One row per stored position: a classifier's rows as they are; a sequence batch flattened
    over its valid tokens, with the next token as label (-1 at a block's last token). Made once
    per batch, whatever the number of students (pair it with each one's `position_logits`).

    -> labels [N], valid [B, T] (None for a classifier), and when the batch has them:
    topk_index [N, k], topk_logit [N, k], logsumexp_t [N], teacher_top1 [N].
    """
    keys = [k for k in ("topk_index", "topk_logit", "logsumexp_t", "rest_t", "teacher_top1", "sample_index", "sample_count") if k in batch]
    if "input_ids" not in batch:
        return {"valid": None, "labels": batch["label"], **{k: batch[k] for k in keys}}
    ids, length = batch["input_ids"], batch["length"]
    valid = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) < length.unsqueeze(1)
    labels = torch.full_like(ids, -1)
    labels[:, :-1] = torch.where(valid[:, 1:], ids[:, 1:], -1)
    return {"valid": valid, "labels": labels[valid], **{k: batch[k][valid] for k in keys}}


def position_logits(p: dict[str, torch.Tensor | None], logits: torch.Tensor) -> torch.Tensor:
    """A model's logits in the rows of `positions`: [B, V] as they are, [B, T, V] -> [N, V]."""
    return logits if p["valid"] is None else logits[p["valid"]]


@torch.no_grad()
def evaluate(models: list[torch.nn.Module], data, batch_size: int, kl_temperature: float) -> list[dict[str, float | None]]:
    """For each model, in one pass over the data: accuracy and cross-entropy on labelled positions
    (next tokens for sequences); agreement with the teacher's top-1 and KL(teacher || student) at
    `kl_temperature` when the data carries a store."""
    for model in models:
        model.eval()
    sums = [dict(correct=0, agree=0, ce=0.0, kl=0.0) for _ in models]
    labelled = with_teacher = 0
    sequence = False
    for batch in data.iter_torch_batches(batch_size=batch_size):
        sequence = "input_ids" in batch
        p = positions(batch)
        has_label = p["labels"] >= 0
        for model, acc in zip(models, sums):
            logits = position_logits(p, model(model_inputs(batch)))
            pred = logits.argmax(dim=-1)
            acc["correct"] += int((pred[has_label] == p["labels"][has_label]).sum())
            if bool(has_label.any()):
                acc["ce"] += float(F.cross_entropy(logits[has_label].float(), p["labels"][has_label], reduction="sum"))
            if "teacher_top1" in p:
                acc["agree"] += int((pred == p["teacher_top1"]).sum())
                kd = topk_kd_loss(logits, p["topk_index"], p["topk_logit"], p["logsumexp_t"], kl_temperature, p.get("rest_t"))
                acc["kl"] += float(kd.sum()) / kl_temperature**2
        labelled += int(has_label.sum())
        with_teacher += int(p["labels"].shape[0]) if "teacher_top1" in p else 0
    results = []
    for acc in sums:
        ce = acc["ce"] / labelled if labelled else None
        results.append({
            "eval_accuracy": acc["correct"] / labelled if labelled else None,
            "eval_cross_entropy": ce,
            "eval_perplexity": math.exp(ce) if sequence and ce is not None else None,
            "teacher_agreement": acc["agree"] / with_teacher if with_teacher else None,
            "eval_kl_to_teacher": acc["kl"] / with_teacher if with_teacher else None,
            "eval_positions": max(with_teacher, labelled),
        })
    return results


def checkpoint_file(student: int, students: int) -> str:
    """A student's weights in a checkpoint: model.pt alone, or model-<i>.pt for one of several."""
    return CHECKPOINT_FILE if students == 1 else f"model-{student}.pt"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _restore(models: list[torch.nn.Module]) -> tuple[dict | None, list[dict]]:
    """Weights, optimiser state and history from the latest checkpoint, when this run is a restart
    (a worker died, or the same command was rerun after the driver died)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, []
    with checkpoint.as_directory() as path:
        for i, model in enumerate(models):
            weights = os.path.join(path, checkpoint_file(i, len(models)))
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)
        with open(os.path.join(path, HISTORY_FILE)) as fh:
            history = json.load(fh)
    return state, history


def _report(models, optimizers, schedules, history: list[dict], metrics: dict, *, epoch: int, step: int, checkpoint: bool) -> None:
    """ray.train.report from every worker; rank 0 attaches the checkpoint: each student's weights
    (loadable with weights_only=True), optimiser and schedule states, and where in training it was taken."""
    if not checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        attached = None
        if ray.train.get_context().get_world_rank() == 0:
            for i, model in enumerate(models):
                torch.save(_unwrap(model).state_dict(), os.path.join(tmp, checkpoint_file(i, len(models))))
            torch.save({"optimizers": [o.state_dict() for o in optimizers], "schedules": [s.state_dict() for s in schedules],
                        "epoch": epoch, "step": step}, os.path.join(tmp, STATE_FILE))
            with open(os.path.join(tmp, HISTORY_FILE), "w") as fh:
                json.dump(history, fh)
            attached = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=attached)


def stored_view(batch: dict[str, torch.Tensor], epoch: int, augment, views: int) -> dict[str, torch.Tensor]:
    """A store of augmented views: each sample trains on view (epoch + id) mod V this epoch (each
    view once per V epochs), with that view's targets and its input augmented by that view's
    stored seed, exactly as the teacher saw it."""
    rows = torch.arange(batch["id"].shape[0])
    view = (batch["id"] + epoch) % views
    picked = {k: v[rows, view] for k, v in batch.items() if k in VIEW_KEYS}
    return {**batch, **picked, "features": augment(batch["features"], picked["view_seed"])}


def fresh_augmentation(batch: dict[str, torch.Tensor], epoch: int, augment, seed: int) -> dict[str, torch.Tensor]:
    """Train-time augmentation without stored views: a new one per sample and epoch; the targets
    stay those of the un-augmented input (the inconsistent teaching that views avoid)."""
    seeds = torch.from_numpy(derive_seeds(seed, batch["id"].numpy(), epoch + 1))
    return {**batch, "features": augment(batch["features"], seeds)}


def _targets(p: dict[str, torch.Tensor], column: int) -> dict[str, torch.Tensor]:
    """The stored arrays of these positions at one student's temperature (the join carries one
    logsumexp_t / rest_t column per temperature the run's students train at)."""
    picked = {k: p[k][..., column] if k in p else None for k in ("logsumexp_t", "rest_t")}
    return {k: p.get(k) for k in ("topk_index", "topk_logit", "sample_index", "sample_count")} | picked


def train_loop_per_worker(cfg: dict) -> None:
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(cfg["threads"])
    students = cfg["students"]  # one dict per student: its model spec and optimiser and loss settings

    models = []
    for s in students:
        torch.manual_seed(cfg["seed"])  # every student starts as it would in a run of its own
        models.append(build_model(s["student"], "--student"))
    state, history = _restore(models)  # before wrapping: the checkpoint holds the plain modules' weights
    models = [ray.train.torch.prepare_model(m) for m in models]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=s["lr"], weight_decay=s["weight_decay"]) for m, s in zip(models, students)]
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=cfg["epochs"]) for o in optimizers]
    # (epoch, step): epochs finished, and optimiser steps already taken in the next one.
    start_epoch, skip_steps = 0, 0
    if state is not None:
        for optimizer, schedule, o_state, s_state in zip(optimizers, schedules, state["optimizers"], state["schedules"]):
            optimizer.load_state_dict(o_state)
            schedule.load_state_dict(s_state)
        start_epoch, skip_steps = int(state["epoch"]), int(state["step"])
        if rank == 0:
            print(json.dumps({"resumed_from": {"epoch": start_epoch, "step": skip_steps}}))
    train_data = ray.train.get_dataset_shard("train")
    eval_data = ray.train.get_dataset_shard("eval") if cfg["has_eval"] else None
    every_steps = cfg["checkpoint_every_steps"]
    augment = resolve_augment(cfg["augment"]) if cfg["augment"] else None

    for epoch in range(start_epoch, cfg["epochs"]):
        for model in models:
            model.train()
        epoch_start = time.perf_counter()
        totals = torch.zeros(len(students), 4, dtype=torch.float64)  # per student: loss, kd, ce (each * positions), positions
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
            if cfg["views"]:
                batch = stored_view(batch, epoch, augment, cfg["views"])
            elif augment is not None:
                batch = fresh_augmentation(batch, epoch, augment, cfg["seed"])
            p = positions(batch)
            for i, (s, model, optimizer) in enumerate(zip(students, models, optimizers)):  # each batch feeds every student
                logits = position_logits(p, model(model_inputs(batch)))
                loss, kd, ce = distillation_loss(
                    logits, p["labels"], **_targets(p, s["temperature_column"]),
                    temperature=s["temperature"], alpha=s["alpha"], selection=cfg["selection"], kind=s["loss"], beta=s["jsd_beta"],
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = logits.shape[0]
                totals[i] += torch.tensor([loss.item() * n, kd.item() * n, ce.item() * n, n], dtype=torch.float64)
            if every_steps and step % every_steps == 0:
                _report(models, optimizers, schedules, history, {"epoch": epoch, "step": step}, epoch=epoch, step=step, checkpoint=True)
        for schedule in schedules:
            schedule.step()
        epoch_seconds = time.perf_counter() - epoch_start

        totals = _all_reduce_sum(totals)
        per_student = [{
            "train_loss": t[0].item() / max(t[3].item(), 1.0),
            "train_kd_loss": t[1].item() / max(t[3].item(), 1.0),
            "train_ce_loss": t[2].item() / max(t[3].item(), 1.0),
            "train_positions": int(t[3].item()),
        } for t in totals]
        last = epoch + 1 == cfg["epochs"]
        due = last or (cfg["eval_every"] and (epoch + 1) % cfg["eval_every"] == 0)
        if rank == 0 and eval_data is not None and due:
            for mine, result in zip(per_student, evaluate([_unwrap(m) for m in models], eval_data, cfg["eval_batch_size"], cfg["eval_temperature"])):
                mine.update(result)
        metrics = {
            "epoch": epoch + 1,
            "train_steps": step,  # optimiser steps of this worker in this epoch (skipped ones included)
            "epoch_seconds": epoch_seconds,  # this worker's training pass (data, forward, backward, step), not eval
            # One student: its figures at the top level; several: a list in the order of --variants.
            **(per_student[0] if len(students) == 1 else {"students": per_student}),
        }
        if state is not None and epoch == start_epoch:
            # This epoch began from a restart; with skip > 0 the train_* figures cover only the steps after it.
            metrics["resumed_from"] = {"epoch": start_epoch, "step": skip_steps}
        history.append(metrics)
        if rank == 0:
            print(json.dumps(metrics))
        _report(models, optimizers, schedules, history, metrics, epoch=epoch + 1, step=0,
                checkpoint=last or (epoch + 1) % cfg["checkpoint_every"] == 0)
