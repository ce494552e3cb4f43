"""Sampled and hybrid KD estimators: unbiased for full-vocabulary KD cross-entropy; top-k alone is not."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.student.losses import hybrid_cross_entropy, sampled_cross_entropy
from trainer.student.targets import TeacherTargets
from trainer.teacher.scorer import draw_teacher_samples

V, T, TRIALS = 500, 2.0, 4000


def setup():
    g = torch.Generator().manual_seed(11)
    # A long-tailed teacher (as a language model's next-token distribution is) and a different student.
    teacher = torch.randn(1, V, generator=g) * 2.5
    student = torch.randn(1, V, generator=g) * 2.5
    p = torch.softmax(teacher / T, dim=1)
    truth = float(-(p * torch.log_softmax(student / T, dim=1)).sum() * T**2)
    return g, teacher, student, truth


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def test_draws_are_unique_ids_with_counts():
    g, teacher, _, _ = setup()
    index, count = draw_teacher_samples(teacher.repeat(3, 1), T, 12, generator=g)
    assert index.shape == count.shape == (3, 12)
    assert (count.sum(dim=1) == 12).all() and (count[:, :-1] >= count[:, 1:]).all()
    for row in range(3):
        used = index[row][count[row] > 0]
        assert used.unique().numel() == used.numel()
    head = teacher.topk(8, dim=1).indices
    tail_index, tail_count = draw_teacher_samples(teacher, T, 12, generator=g, exclude=head)
    assert not set(tail_index[tail_count > 0].tolist()) & set(head[0].tolist())


def test_sampled_estimate_is_unbiased():
    """Mean of 4000 estimates from 12 draws each is within 4 standard errors of the exact value."""
    g, teacher, student, truth = setup()
    index, count = draw_teacher_samples(teacher.repeat(TRIALS, 1), T, 12, generator=g)
    mean, se = mean_and_stderr(sampled_cross_entropy(student.repeat(TRIALS, 1), index, count, T))
    assert abs(mean - truth) < 4 * se, (mean, truth, se)


def test_hybrid_estimate_is_unbiased():
    g, teacher, student, truth = setup()
    k, m = 8, 4
    head_logit, head_index = teacher.topk(k, dim=1)
    lse = torch.logsumexp(teacher / T, dim=1)
    tail_index, tail_count = draw_teacher_samples(
        teacher.repeat(TRIALS, 1), T, m, generator=g, exclude=head_index.repeat(TRIALS, 1)
    )
    targets = TeacherTargets(
        "hybrid",
        (T,),
        head_index.repeat(TRIALS, 1),
        head_logit.repeat(TRIALS, 1),
        lse.repeat(TRIALS).unsqueeze(1),
        sample_index=tail_index,
        sample_count=tail_count,
    )
    est = hybrid_cross_entropy(student.repeat(TRIALS, 1), targets, T)
    mean, se = mean_and_stderr(est)
    assert abs(mean - truth) < 4 * se, (mean, truth, se)


def renormalised_topk_cross_entropy(student_logits, topk_index, topk_logit, temperature):
    """The common top-k-only target (teacher head renormalised to sum 1, tail dropped): a biased
    estimate of T^2 * H(p_T, q_T). [N, V], [N, k], [N, k] -> [N]."""
    p = torch.softmax(topk_logit.float() / temperature, dim=1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1).gather(1, topk_index)
    return -(p * log_q).sum(dim=1) * temperature**2


def test_topk_only_estimate_is_biased():
    g, teacher, student, truth = setup()
    head_logit, head_index = teacher.topk(12, dim=1)
    biased = float(renormalised_topk_cross_entropy(student, head_index, head_logit, T))
    index, count = draw_teacher_samples(teacher.repeat(TRIALS, 1), T, 12, generator=g)
    _, se = mean_and_stderr(sampled_cross_entropy(student.repeat(TRIALS, 1), index, count, T))
    # Deterministic, so its error is pure bias; it is many sampling standard errors away.
    assert abs(biased - truth) > 20 * se, (biased, truth, se)
