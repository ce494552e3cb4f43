"""Distillation losses over stored teacher targets (TeacherTargets), one public function per concept:

  bucket_divergence      T^2 * D(teacher, student) over the k stored classes + one rest bucket
                         (kl, reverse-kl, jsd): a top-k store's exact KD
  sampled_cross_entropy  unbiased estimate of T^2 * H(teacher, student) from draws (sample stores)
  hybrid_cross_entropy   the top-k head exactly, the tail from draws (hybrid stores)
  kd_loss                the KD term of a store's selection (one of the three above), per position
  labelled_cross_entropy CE on the positions that have a label
  distillation_loss      alpha * mean KD + (1 - alpha) * mean CE: what a student's step minimises
  chunked_distillation_loss  the same value and gradients, `chunk` positions at a time: peak
                         memory chunk x V instead of positions x V

The teacher's distribution at temperature T is represented by k+1 buckets: the k stored classes
with their exact probabilities, and one "rest" bucket holding the tail mass 1 - sum(p_head).
The student's distribution is folded onto the same k+1 buckets, and KD is the divergence between
the two, scaled by T^2 (Hinton et al. 2015) so its gradients keep their size across T. With
k = V the rest bucket is empty and this is exactly the textbook full-softmax KD. An adaptive head
(a `head_mask` of the columns that are classes) gives its padding columns zero mass on both sides,
so each position has its own number of buckets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from trainer.student.config import LOSS_KINDS
from trainer.student.targets import TeacherTargets

FLOOR = torch.finfo(torch.float32).min  # log of an empty bucket: finite, so 0 * log terms stay 0, not NaN


def teacher_buckets(
    topk_logit: torch.Tensor,
    logsumexp_t: torch.Tensor,
    temperature: float,
    vocab_size: int | None = None,
    rest_t: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher log-probabilities and probabilities at T of the stored classes, and the rest mass.

    topk_logit [N, k] (raw logits), logsumexp_t [N] (logsumexp(z/T) over the full vocabulary),
    rest_t [N] or None (the stored tail mass, given by stores whose logits are quantized),
    head_mask [N, k] bool or None (adaptive heads: padding columns get log p = FLOOR, p = 0)
    -> (log_p_head [N, k], p_head [N, k], p_rest [N]). With k = vocab_size the rest is exactly 0.
    """
    z = topk_logit.float() / temperature
    if rest_t is not None:
        # Quantized logits: 1 - sum(head) would be rounding noise, so the exact stored rest is the
        # tail, and the head is renormalised to 1 - rest (the k+1 buckets sum to 1).
        p_rest = _no_rest_in_full_rows(rest_t.float(), z.shape[1], vocab_size, head_mask)
        log_head = torch.log_softmax(z if head_mask is None else z.masked_fill(~head_mask, -math.inf), dim=1)
        log_p_head = log_head + torch.log1p(-p_rest.clamp(max=1.0 - 1e-7)).unsqueeze(1)
        if head_mask is not None:
            log_p_head = torch.where(head_mask, log_p_head, FLOOR)
        return log_p_head, log_p_head.exp(), p_rest
    log_p_head = z - logsumexp_t.float().unsqueeze(1)  # exact, no log(exp(.))
    if head_mask is not None:
        log_p_head = torch.where(head_mask, log_p_head, FLOOR)
    p_head = log_p_head.exp()
    p_rest = _no_rest_in_full_rows((1.0 - p_head.sum(dim=1)).clamp(min=0.0), z.shape[1], vocab_size, head_mask)
    return log_p_head, p_head, p_rest


def _no_rest_in_full_rows(
    p_rest: torch.Tensor, k: int, vocab_size: int | None, head_mask: torch.Tensor | None
) -> torch.Tensor:
    """p_rest [N] with 0 where a row holds every class (k columns, head_mask's of them): not the
    rounding noise 1 - sum (or a stored tail) leaves there, which the student's empty rest (log 0)
    would turn into a huge KL."""
    if vocab_size is None or k < vocab_size:  # some class is always outside the head
        return p_rest
    if head_mask is None:
        return torch.zeros_like(p_rest)
    return p_rest.masked_fill(head_mask.sum(dim=1) == vocab_size, 0.0)


def student_buckets(
    student_logits: torch.Tensor, topk_index: torch.Tensor, temperature: float, head_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student log-probabilities at T folded onto the teacher's buckets.

    student_logits [N, V], topk_index [N, k], head_mask [N, k] bool or None (adaptive heads: padding
    columns get log q = FLOOR) -> (log_q_head [N, k], log_q_rest [N]).
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    if head_mask is not None:  # padding points at the row's top-1 id, so the scatter below stays right
        topk_index = torch.where(head_mask, topk_index, topk_index[:, :1])
    log_q_head = log_q.gather(1, topk_index)
    if head_mask is not None:
        log_q_head = torch.where(head_mask, log_q_head, FLOOR)
    # Rest bucket as 1 - sum(head): k values per row instead of another pass (and its backward)
    # over all V. In float32 that sum is off by ~k * 6e-8, so rows whose rest is below 1e-2 (and
    # every row when k = V) take the exact logsumexp over the classes not stored instead. Its
    # finite fill (not -inf) keeps the gradient finite when k = V and the rest is empty.
    rest = 1.0 - log_q_head.exp().sum(dim=1)
    log_q_rest = torch.log(rest.clamp(min=torch.finfo(rest.dtype).tiny))
    small = rest < 1e-2
    if bool(small.any()):
        rows = small.nonzero().squeeze(1)
        masked = log_q[rows].scatter(1, topk_index[rows], torch.finfo(log_q.dtype).min)
        log_q_rest = log_q_rest.index_copy(0, rows, torch.logsumexp(masked, dim=1))
    return log_q_head, log_q_rest


def _forward_kl(student_logits: torch.Tensor, targets: TeacherTargets, temperature: float) -> torch.Tensor:
    """KL(teacher || student) over the k+1 buckets, [N]."""
    logsumexp_t, rest_t = targets.at(temperature)
    mask = targets.head_mask
    log_p_head, p_head, p_rest = teacher_buckets(
        targets.topk_logit, logsumexp_t, temperature, student_logits.shape[1], rest_t, mask
    )
    log_q_head, log_q_rest = student_buckets(student_logits, targets.topk_index, temperature, mask)
    kl_head = (p_head * (log_p_head - log_q_head)).sum(dim=1)
    # xlogy(p, p) is 0 where p == 0, so an empty rest bucket (k = V) adds nothing.
    return kl_head + torch.xlogy(p_rest, p_rest) - p_rest * log_q_rest


def _bucket_kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) over buckets given as finite log-probabilities [N, B] -> [N] (empty buckets of a add 0)."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), 0.0).sum(dim=1)


def bucket_divergence(
    student_logits: torch.Tensor, targets: TeacherTargets, temperature: float, kind: str = "kl", beta: float = 0.5
) -> torch.Tensor:
    """Per-position T^2 * D(teacher, student) over the k+1 buckets, for a divergence `kind`:

    kl          KL(p || q), Hinton's forward KL (mean-seeking).
    reverse-kl  KL(q || p) (mode-seeking): the student is charged for mass where the teacher has little.
    jsd         generalised Jensen-Shannon, beta * KL(p || m) + (1 - beta) * KL(q || m) with
                m = beta * p + (1 - beta) * q (Agarwal et al. 2024); bounded, symmetric at beta 0.5.

    Folding both distributions onto the same buckets can only lower a divergence (data processing),
    and with k = V the buckets are the classes: each is then the textbook dense divergence.
    student_logits [N, V], targets of N positions (a top-k head, logsumexp at T) -> [N].
    """
    if kind == "kl":
        return _forward_kl(student_logits, targets, temperature) * temperature**2
    logsumexp_t, rest_t = targets.at(temperature)
    mask = targets.head_mask
    log_p_head, _, p_rest = teacher_buckets(
        targets.topk_logit, logsumexp_t, temperature, student_logits.shape[1], rest_t, mask
    )
    log_q_head, log_q_rest = student_buckets(student_logits, targets.topk_index, temperature, mask)
    # Finite floors instead of log(0) = -inf keep 0 * log terms and their gradients finite.
    log_p = torch.cat([log_p_head, torch.log(p_rest).clamp(min=FLOOR).unsqueeze(1)], dim=1)
    log_q = torch.cat([log_q_head, log_q_rest.clamp(min=FLOOR).unsqueeze(1)], dim=1)
    if kind == "reverse-kl":
        divergence = _bucket_kl(log_q, log_p)
    elif kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
        divergence = beta * _bucket_kl(log_p, log_m) + (1.0 - beta) * _bucket_kl(log_q, log_m)
    else:
        raise ValueError(f"unknown loss kind {kind!r} (expected one of {', '.join(LOSS_KINDS)})")
    return divergence * temperature**2


def labelled_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy summed over rows that have a label (label < 0 means missing).

    student_logits [N, V], labels [N] (int64) -> (sum of CE over labelled rows [], count []).
    """
    has_label = labels >= 0
    count = has_label.sum()
    if not bool(has_label.any()):
        return student_logits.sum() * 0.0, count
    ce = F.cross_entropy(student_logits[has_label].float(), labels[has_label], reduction="sum")
    return ce, count


def kd_loss(
    student_logits: torch.Tensor, targets: TeacherTargets, temperature: float, kind: str = "kl", beta: float = 0.5
) -> torch.Tensor:
    """The per-position KD term of a store's selection: the exact k+1-bucket divergence `kind`
    (topk), or the unbiased full-KD cross-entropy estimates (sample, hybrid: forward KL only; they
    differ from KL by the teacher's entropy, a constant for the student).

    student_logits [N, V], targets of the same N positions -> [N].
    """
    if targets.selection == "topk":
        return bucket_divergence(student_logits, targets, temperature, kind, beta)
    if kind != "kl":
        raise ValueError(f"loss {kind!r} needs the teacher's exact head; a {targets.selection} store supports only kl")
    if targets.selection == "sample":
        return sampled_cross_entropy(student_logits, targets.sample_index, targets.sample_count, temperature)
    if targets.selection == "hybrid":
        return hybrid_cross_entropy(student_logits, targets, temperature)
    raise ValueError(f"unknown selection {targets.selection!r}")


class LossParts(NamedTuple):
    loss: torch.Tensor  # [] what the optimiser minimises
    kd: torch.Tensor  # [] mean KD over positions (detached, for logging)
    ce: torch.Tensor  # [] mean CE over labelled positions (detached, for logging)


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    targets: TeacherTargets | None,
    *,
    temperature: float,
    alpha: float,
    kind: str = "kl",
    beta: float = 0.5,
) -> LossParts:
    """alpha * mean(KD over all positions) + (1 - alpha) * mean(CE over labelled positions).

    student_logits [N, V], labels [N] int64 (< 0: no label), targets of the N positions (None when
    alpha is 0: labels only). Positions without a label get only the KD term; a batch without
    labels is pure KD.
    """
    kd = kd_loss(student_logits, targets, temperature, kind, beta).mean() if alpha > 0 else student_logits.sum() * 0.0
    ce_sum, count = labelled_cross_entropy(student_logits, labels)
    ce = ce_sum / count.clamp(min=1)
    return LossParts(alpha * kd + (1.0 - alpha) * ce, kd.detach(), ce.detach())


CHUNK_BYTES = 256 * 2**20  # a float32 [chunk, V] of the auto loss chunk


def auto_loss_chunk(vocab_size: int) -> int:
    """Positions per loss chunk whose float32 [chunk, V] logits fit CHUNK_BYTES (at least 64): one
    piece for small vocabularies, ~440 positions at V = 152k."""
    return max(64, CHUNK_BYTES // (4 * vocab_size))


def chunked_distillation_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    targets: TeacherTargets | None,
    *,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk: int,
    temperature: float,
    alpha: float,
    kind: str = "kl",
    beta: float = 0.5,
    totals: tuple[int, int] | None = None,
) -> LossParts:
    """distillation_loss(head(features), ...) computed `chunk` positions at a time (Liger's chunked
    loss): each chunk's logits, log-softmax and loss terms are reduced to sums and recomputed in the
    backward (activation checkpointing), so no [N, V] float32 tensor outlives its chunk. Given a
    model's last hidden states and output layer, not even the logits exist whole.

    features [N, d] with head [.., d] -> [.., V], or the logits [N, V] themselves (head None);
    labels [N] int64 (< 0: no label); targets of the N positions (None when alpha is 0). chunk <= 0
    or >= N: one piece, exactly distillation_loss. `totals` (positions, labelled positions) of a
    larger batch this one is part of (gradient accumulation): the means are taken over those, so
    the parts of the batches add up to the larger batch's loss.
    """
    n = features.shape[0]
    if totals is None and (chunk <= 0 or chunk >= n):
        logits = features if head is None else head(features)
        return distillation_loss(logits, labels, targets, temperature=temperature, alpha=alpha, kind=kind, beta=beta)
    if n == 0:  # a micro-batch without positions adds nothing (a zero still in the graph, for backward)
        zero = features.sum().float() * 0.0
        return LossParts(zero, zero.detach(), zero.detach())
    kd_sum = ce_sum = features.new_zeros((), dtype=torch.float32)
    count = torch.zeros((), dtype=torch.int64, device=features.device)
    chunk = chunk if 0 < chunk < n else n
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        part = None if targets is None or alpha <= 0 else targets.rows(rows)
        args = (features[rows], labels[rows], part, head, temperature, kind, beta)
        if chunk == n:  # one piece: nothing to save by recomputing it
            kd_c, ce_c, count_c = _chunk_sums(*args)
        else:
            kd_c, ce_c, count_c = torch.utils.checkpoint.checkpoint(_chunk_sums, *args, use_reentrant=False)
        kd_sum, ce_sum, count = kd_sum + kd_c, ce_sum + ce_c, count + count_c
    positions, labelled = totals if totals is not None else (n, count)
    kd = kd_sum / positions
    ce = ce_sum / (labelled.clamp(min=1) if torch.is_tensor(labelled) else max(labelled, 1))
    return LossParts(alpha * kd + (1.0 - alpha) * ce, kd.detach(), ce.detach())


def _chunk_sums(
    features: torch.Tensor,
    labels: torch.Tensor,
    targets: TeacherTargets | None,
    head: Callable[[torch.Tensor], torch.Tensor] | None,
    temperature: float,
    kind: str,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of positions -> (sum of KD [], sum of CE over its labelled rows [], their count [])."""
    logits = features if head is None else head(features)
    kd = kd_loss(logits, targets, temperature, kind, beta).sum() if targets is not None else logits.sum() * 0.0
    ce, count = labelled_cross_entropy(logits, labels)
    return kd.float(), ce.float(), count


# --- Sparse teacher targets by sampling (Anshumann et al., ACL 2025) ------------------------------
#
# Full KD's cross-entropy H(p, q) = -sum_v p_v log q_v is an expectation over v ~ p, so n draws
# from the teacher give the unbiased estimate -(1/n) sum_j log q_{v_j}. The hybrid keeps the
# exact top-k head and estimates only the tail from m draws of the renormalised tail:
# H = -sum_{head} p_i log q_i + tail_mass * E_{v ~ p_tail / tail_mass}[-log q_v]. The draws are
# made by the teacher pass (trainer/teacher/scorer.py: draw_teacher_samples).


def sampled_cross_entropy(
    student_logits: torch.Tensor, sample_index: torch.Tensor, sample_count: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Unbiased estimate of T^2 * H(p_T, q_T) from draws of the teacher at T.

    student_logits [N, V], sample_index [N, m], sample_count [N, m] (0 = padding) -> [N].
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1).gather(1, sample_index)
    weights = sample_count.float() / sample_count.sum(dim=1, keepdim=True).clamp(min=1)
    return -(weights * log_q).sum(dim=1) * temperature**2


def hybrid_cross_entropy(student_logits: torch.Tensor, targets: TeacherTargets, temperature: float) -> torch.Tensor:
    """Unbiased estimate of T^2 * H(p_T, q_T): the top-k head exactly, the tail from draws of the
    renormalised tail (`targets.sample_index/sample_count`, drawn with the head excluded).

    student_logits [N, V], targets of N positions (head [N, k], draws [N, m]) -> [N].
    """
    logsumexp_t, rest_t = targets.at(temperature)
    _, p_head, p_rest = teacher_buckets(targets.topk_logit, logsumexp_t, temperature, student_logits.shape[1], rest_t)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    head = -(p_head * log_q.gather(1, targets.topk_index)).sum(dim=1)
    weights = targets.sample_count.float() / targets.sample_count.sum(dim=1, keepdim=True).clamp(min=1)
    tail = -(weights * log_q.gather(1, targets.sample_index)).sum(dim=1)
    return (head + p_rest * tail) * temperature**2


def _sorted_head(targets: TeacherTargets, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's stored head at T: (log p [M, k], p [M, k], tail [M]) (teacher_buckets')."""
    lse, rest = targets.at(temperature)
    return teacher_buckets(targets.topk_logit, lse, temperature, None, rest, targets.head_mask)


def _uld(p: torch.Tensor, p_tail: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_i |p_(i) - q_(i)| over each side's k largest, sorted, + |the rest of p - the rest of q|.
    p [M, k] (0 where not a class), p_tail [M]; q [M, V] the student's probabilities that take part."""
    k = min(p.shape[1], q.shape[1])
    p_sorted = p.sort(dim=1, descending=True).values
    q_top = q.topk(k, dim=1).values
    q_rest = (q.sum(dim=1) - q_top.sum(dim=1)).clamp(min=0.0)
    p_rest = p_tail + p_sorted[:, k:].sum(dim=1)
    return (p_sorted[:, :k] - q_top).abs().sum(dim=1) + (p_rest - q_rest).abs()


def uld_loss(student_logits: torch.Tensor, targets: TeacherTargets, temperature: float) -> torch.Tensor:
    """Universal Logit Distillation (Boizard et al. 2024) across vocabularies, per position [M]:
    the L1 distance between the sorted probabilities at T of teacher and student over the stored
    head's k, plus the tails' difference (ULD's Wasserstein distance with the tail as one bucket).

    student_logits [M, V_s] at the aligned positions; targets: their M teacher positions.
    """
    _, p, p_tail = _sorted_head(targets, temperature)
    q = torch.softmax(student_logits.float() / temperature, dim=1)
    return _uld(p, p_tail, q)


def gold_loss(
    student_logits: torch.Tensor, targets: TeacherTargets, temperature: float, vocab_map: torch.Tensor
) -> torch.Tensor:
    """GOLD-style hybrid, per position [M]: T^2 * KL(teacher || student) over the stored classes whose
    text the student's vocabulary holds too (`vocab_map` [V_t]: the student id of each teacher id,
    -1 for none), plus ULD between the rest of each side (the teacher's unmatched head and tail; the
    student's probabilities outside the matched ids)."""
    log_p, p, p_tail = _sorted_head(targets, temperature)
    mapped = vocab_map[targets.topk_index]
    matched = mapped >= 0
    if targets.head_mask is not None:
        matched &= targets.head_mask
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=1)
    at = mapped.clamp(min=0)
    kl = torch.where(matched, p * (log_p - log_q.gather(1, at)), 0.0).sum(dim=1) * temperature**2
    q = log_q.exp()
    # the student ids the KL covered (amax: an unmatched column pointing at id 0 must not clear it)
    taken = torch.zeros_like(q).scatter_reduce(1, at, matched.float(), reduce="amax") > 0
    outside = q.masked_fill(taken, 0.0)
    return kl + _uld(torch.where(matched, 0.0, p), p_tail, outside)
