"""Held-out metrics of every student in one pass over the eval data, `loss_chunk` positions at a time."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.student.batches import BatchOptions, make_batch
from trainer.student.losses import bucket_divergence
from trainer.student.students import Student
from trainer.student.targets import TeacherTargets


@torch.no_grad()
def evaluate(
    students: list[Student], data, options: BatchOptions, device: torch.device
) -> list[dict[str, float | None]]:
    """For each student, in one pass over `data` (batch rows of the join, in id order): accuracy and
    cross-entropy on labelled positions (next tokens for sequences); agreement with the teacher's
    top-1 and KL(teacher || student) at the eval store's temperature when the data carries a store."""
    for student in students:
        student.model.eval()
    sums = [dict(correct=0, agree=0, ce=0.0, kl=0.0) for _ in students]
    labelled = with_teacher = 0
    sequence = False
    # The eval store's temperature; none without --eval-store (labels only: no targets to compare with).
    temperature = options.temperatures[0] if options.temperatures else 1.0
    for row in data.iter_batches(batch_size=1, batch_format="numpy"):
        batch = make_batch(row, options, 0, device)
        sequence = batch.valid is not None
        for student, acc in zip(students, sums):
            features, head, chunk = student.features(batch, wrapped=False)
            for start in range(0, features.shape[0], chunk):
                rows = slice(start, start + chunk)
                logits = features[rows] if head is None else head(features[rows])
                targets = None if batch.targets is None else batch.targets.rows(rows)
                _add_chunk(acc, logits, batch.labels[rows], targets, temperature)
        labelled += int((batch.labels >= 0).sum())
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


def _add_chunk(
    acc: dict, logits: torch.Tensor, labels: torch.Tensor, targets: TeacherTargets | None, temperature: float
) -> None:
    """Add one chunk's sums to `acc`: logits [n, V], labels [n] (< 0: none), the chunk's targets or None."""
    has_label = labels >= 0
    pred = logits.argmax(dim=-1)
    acc["correct"] += int((pred[has_label] == labels[has_label]).sum())
    if bool(has_label.any()):
        acc["ce"] += float(F.cross_entropy(logits[has_label].float(), labels[has_label], reduction="sum"))
    if targets is not None:
        acc["agree"] += int((pred == targets.teacher_top1).sum())
        acc["kl"] += float(bucket_divergence(logits, targets, temperature).sum()) / temperature**2
