"""Held-out metrics of every student in one pass over the eval data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.student.batches import BatchOptions, make_batch
from trainer.student.losses import bucket_divergence

EVAL_BATCH_SIZE = 256


@torch.no_grad()
def evaluate(
    models: list[torch.nn.Module], data, options: BatchOptions, device: torch.device
) -> list[dict[str, float | None]]:
    """For each model, in one pass over `data` (batch rows of the join, in id order): accuracy and
    cross-entropy on labelled positions (next tokens for sequences); agreement with the teacher's
    top-1 and KL(teacher || student) at the eval store's temperature when the data carries a store."""
    for model in models:
        model.eval()
    sums = [dict(correct=0, agree=0, ce=0.0, kl=0.0) for _ in models]
    labelled = with_teacher = 0
    sequence = False
    for row in data.iter_batches(batch_size=1, batch_format="numpy"):
        batch = make_batch(row, options, 0, device)
        sequence = batch.valid is not None
        has_label = batch.labels >= 0
        for model, acc in zip(models, sums):
            logits = batch.positions(model(batch.inputs))
            pred = logits.argmax(dim=-1)
            acc["correct"] += int((pred[has_label] == batch.labels[has_label]).sum())
            if bool(has_label.any()):
                acc["ce"] += float(F.cross_entropy(logits[has_label].float(), batch.labels[has_label], reduction="sum"))
            if batch.targets is not None:
                t = options.temperatures[0]
                acc["agree"] += int((pred == batch.targets.teacher_top1).sum())
                acc["kl"] += float(bucket_divergence(logits, batch.targets, t).sum()) / t**2
        labelled += int(has_label.sum())
        with_teacher += int(batch.labels.shape[0]) if batch.targets is not None else 0
    results = []
    for acc in sums:
        ce = acc["ce"] / labelled if labelled else None
        results.append(
            {
                "eval_accuracy": acc["correct"] / labelled if labelled else None,
                "eval_cross_entropy": ce,
                "eval_perplexity": math.exp(ce) if sequence and ce is not None else None,
                "teacher_agreement": acc["agree"] / with_teacher if with_teacher else None,
                "eval_kl_to_teacher": acc["kl"] / with_teacher if with_teacher else None,
                "eval_positions": max(with_teacher, labelled),
            }
        )
    return results
