"""Each loss against a plain reference formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.student.losses import bucket_divergence, distillation_loss, labelled_cross_entropy
from trainer.student.targets import TeacherTargets


def full_softmax_kd(student, teacher, T):
    """Textbook Hinton KD: T^2 * KL(softmax(z/T) || softmax(s/T)), per row."""
    p = torch.softmax(teacher.double() / T, dim=1)
    log_q = torch.log_softmax(student.double() / T, dim=1)
    return T**2 * (p * (p.log() - log_q)).sum(dim=1)


def stored(teacher, k, T) -> TeacherTargets:
    values, index = teacher.topk(k, dim=1)
    return TeacherTargets.exact(index, values, torch.logsumexp(teacher / T, dim=1), T)


def bucket_reference(student, teacher, k, T):
    """k+1 buckets, computed row by row in float64 with explicit loops."""
    out = []
    for s_row, z_row in zip(student.double().numpy(), teacher.double().numpy()):
        top = np.argsort(-z_row)[:k]
        p = np.exp(z_row / T) / np.exp(z_row / T).sum()
        q = np.exp(s_row / T) / np.exp(s_row / T).sum()
        rest = np.setdiff1d(np.arange(len(z_row)), top)
        pb = list(p[top]) + [p[rest].sum()]
        qb = list(q[top]) + [q[rest].sum()]
        out.append(T**2 * sum(a * (math.log(a) - math.log(b)) for a, b in zip(pb, qb) if a > 0))
    return torch.tensor(out)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_k_equal_vocab_is_full_kd(T):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(32, 10, generator=g) * 3
    teacher = torch.randn(32, 10, generator=g) * 3
    got = bucket_divergence(student, stored(teacher, 10, T), T)
    # fp32 precision: the loss is computed in float32, the reference in float64; T^2 scales both.
    torch.testing.assert_close(got.double(), full_softmax_kd(student, teacher, T), rtol=1e-5, atol=1e-6 * T**2)


def test_k_equal_vocab_gradient_is_finite_and_matches_full_kd():
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(8, 10, generator=g)
    s1 = (torch.randn(8, 10, generator=g)).requires_grad_()
    s2 = s1.detach().clone().requires_grad_()
    bucket_divergence(s1, stored(teacher, 10, 2.0), 2.0).sum().backward()
    full_softmax_kd(s2, teacher, 2.0).sum().backward()
    assert torch.isfinite(s1.grad).all()
    torch.testing.assert_close(s1.grad.double(), s2.grad.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_topk_buckets_match_reference(k, T):
    g = torch.Generator().manual_seed(k)
    student = torch.randn(16, 10, generator=g) * 2
    teacher = torch.randn(16, 10, generator=g) * 2
    got = bucket_divergence(student, stored(teacher, k, T), T)
    torch.testing.assert_close(got.double(), bucket_reference(student, teacher, k, T), rtol=1e-5, atol=1e-6 * T**2)


def test_kd_is_zero_when_student_equals_teacher_and_positive_otherwise():
    teacher = torch.randn(4, 10)
    assert bucket_divergence(teacher.clone(), stored(teacher, 3, 2.0), 2.0).abs().max() < 1e-5
    assert (bucket_divergence(torch.zeros(4, 10), stored(teacher, 3, 2.0), 2.0) > 0).all()


def test_missing_labels_get_only_the_kd_term():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(6, 10, generator=g)
    teacher = torch.randn(6, 10, generator=g)
    labels = torch.tensor([3, -1, 5, -1, -1, 0])
    T, alpha = 2.0, 0.3
    loss, kd, ce = distillation_loss(student, labels, stored(teacher, 4, T), temperature=T, alpha=alpha)
    kd_ref = bucket_divergence(student, stored(teacher, 4, T), T).mean()
    has = labels >= 0
    ce_ref = torch.nn.functional.cross_entropy(student[has], labels[has])
    torch.testing.assert_close(loss, alpha * kd_ref + (1 - alpha) * ce_ref)
    torch.testing.assert_close(ce, ce_ref)
    # No labels at all: pure KD, whatever alpha.
    loss_unlabelled, _, ce0 = distillation_loss(
        student, torch.full((6,), -1), stored(teacher, 4, T), temperature=T, alpha=alpha
    )
    assert ce0 == 0
    torch.testing.assert_close(loss_unlabelled, alpha * kd_ref)


def test_alpha_zero_is_plain_cross_entropy():
    student = torch.randn(5, 10)
    teacher = torch.randn(5, 10)
    labels = torch.tensor([1, 2, 3, 4, 5])
    loss, _, _ = distillation_loss(student, labels, stored(teacher, 2, 1.0), temperature=1.0, alpha=0.0)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(student, labels))
    total, count = labelled_cross_entropy(student, torch.tensor([-1, -1, -1, -1, -1]))
    assert count == 0 and total == 0


def test_stored_rest_mass_gives_the_tail_bucket_and_a_renormalised_head():
    """With rest_t (stores with quantized logits) the buckets are: head softmax(z/T) over the k
    stored classes scaled to 1 - rest, and the rest exactly rest_t; logsumexp_t is not used."""
    torch.manual_seed(3)
    n, v, k, T = 6, 40, 5, 2.0
    z = torch.randn(n, v, dtype=torch.float64) * 3
    student = torch.randn(n, v, dtype=torch.float64)
    values, index = z.topk(k, dim=1)
    p = torch.softmax(z / T, dim=1)
    rest = 1 - p.gather(1, index).sum(dim=1)
    q = torch.log_softmax(student / T, dim=1)
    head = p.gather(1, index)
    q_rest = torch.logsumexp(q.scatter(1, index, float("-inf")), dim=1)
    reference = ((head * (head.log() - q.gather(1, index))).sum(1) + rest * (rest.log() - q_rest)) * T**2
    noisy_lse = torch.full((n,), 123.0, dtype=torch.float64)  # ignored when the rest is given
    got = bucket_divergence(student, TeacherTargets.exact(index, values, noisy_lse, T, rest_t=rest), T)
    torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-6)  # the loss works in float32
    # A quantized head (logits off by up to 0.05) keeps the tail bucket exact.
    from trainer.student.losses import teacher_buckets

    _, q_head, q_tail = teacher_buckets(values + 0.05 * torch.rand_like(values), noisy_lse, T, v, rest)
    torch.testing.assert_close(q_tail.double(), rest, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        (q_head.sum(1) + q_tail).double(), torch.ones(n, dtype=torch.float64), rtol=1e-6, atol=1e-6
    )


def test_student_rest_bucket_is_exact_for_large_and_tiny_rests():
    """The rest bucket from 1 - sum(head) (rows with rest >= 1e-2) and from the masked logsumexp
    (smaller rests) both match the float64 reference, values and gradients."""
    from trainer.student.losses import student_buckets

    torch.manual_seed(5)
    n, v, k, T = 64, 300, 20, 1.0
    logits = torch.randn(n, v, dtype=torch.float64) * 2
    index = torch.stack([torch.randperm(v)[:k] for _ in range(n)])
    logits[: n // 2].scatter_add_(1, index[: n // 2], torch.full((n // 2, k), 12.0, dtype=torch.float64))  # tiny rests
    reference = torch.logsumexp(torch.log_softmax(logits / T, 1).scatter(1, index, float("-inf")), 1)
    x = logits.float().requires_grad_(True)
    _, rest = student_buckets(x, index, T)
    assert (rest.exp() < 1e-2).sum() >= n // 2 and (rest.exp() >= 1e-2).sum() >= n // 4
    torch.testing.assert_close(rest.double(), reference, rtol=1e-4, atol=1e-4)
    rest.sum().backward()
    y = logits.clone().requires_grad_(True)
    torch.logsumexp(torch.log_softmax(y / T, 1).scatter(1, index, float("-inf")), 1).sum().backward()
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-3, atol=1e-4)


def dense_divergence(student, teacher, T, kind, beta=0.5):
    """Plain dense formulas over all V classes, float64."""
    p = torch.softmax(teacher.double() / T, dim=1)
    q = torch.softmax(student.double() / T, dim=1)
    kl = lambda a, b: (a * (a.log() - b.log())).sum(dim=1)  # noqa: E731
    if kind == "kl":
        return T**2 * kl(p, q)
    if kind == "reverse-kl":
        return T**2 * kl(q, p)
    m = beta * p + (1 - beta) * q
    return T**2 * (beta * kl(p, m) + (1 - beta) * kl(q, m))


@pytest.mark.parametrize("kind,beta", [("kl", 0.5), ("reverse-kl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9)])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_each_loss_kind_with_k_equal_vocab_is_the_dense_divergence(kind, beta, T):
    g = torch.Generator().manual_seed(7)
    teacher = torch.randn(32, 10, generator=g) * 3
    s1 = (torch.randn(32, 10, generator=g) * 3).requires_grad_()
    s2 = s1.detach().clone().requires_grad_()
    got = bucket_divergence(s1, stored(teacher, 10, T), T, kind, beta)
    want = dense_divergence(s2, teacher, T, kind, beta)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6 * T**2)
    got.sum().backward()
    want.sum().backward()
    assert torch.isfinite(s1.grad).all()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kind", ["reverse-kl", "jsd"])
def test_loss_kinds_over_buckets_match_the_dense_formula_on_folded_distributions(kind):
    """With k < V: the same formula applied to both distributions folded to top-k + rest."""
    g = torch.Generator().manual_seed(3)
    k, T = 3, 2.0
    teacher = torch.randn(16, 12, generator=g) * 2
    student = torch.randn(16, 12, generator=g) * 2
    targets = stored(teacher, k, T)
    index = targets.topk_index
    got = bucket_divergence(student, targets, T, kind)

    def fold(logits):
        return torch.cat(
            [
                (probs := torch.softmax(logits.double() / T, dim=1)).gather(1, index),  # noqa: E731
                1 - probs.gather(1, index).sum(1, keepdim=True),
            ],
            dim=1,
        )

    # Buckets as "classes": log of the folded probabilities times T undoes dense_divergence's /T.
    want = dense_divergence(fold(student).log() * T, fold(teacher).log() * T, T, kind)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    dense = dense_divergence(student, teacher, T, kind)
    assert torch.all(got.double() <= dense + 1e-6)  # folding never raises a divergence


def test_reverse_kl_and_jsd_are_zero_at_the_teacher_and_positive_elsewhere():
    g = torch.Generator().manual_seed(5)
    teacher = torch.randn(8, 10, generator=g) * 2
    for kind in ("reverse-kl", "jsd"):
        assert bucket_divergence(teacher.clone(), stored(teacher, 4, 2.0), 2.0, kind).abs().max() < 1e-5
        assert (bucket_divergence(torch.randn(8, 10, generator=g), stored(teacher, 4, 2.0), 2.0, kind) > 1e-3).all()


@pytest.mark.parametrize("kind", ["kl", "reverse-kl", "jsd"])
@pytest.mark.parametrize("quantized", [False, True])
def test_an_adaptive_head_is_each_rows_own_fixed_k_head_values_and_gradients(kind, quantized):
    """Padding columns (an adaptive store's) change nothing: row i with c_i classes of a padded head of
    width 8 gives the loss and the gradient of the same row stored with k = c_i, whatever the padding holds."""
    g = torch.Generator().manual_seed(3)
    n, width, T = 12, 8, 2.0
    teacher = torch.randn(n, 40, generator=g) * 3
    student = torch.randn(n, 40, generator=g) * 2
    counts = torch.randint(1, width + 1, (n,), generator=g)
    values, index = teacher.topk(width, dim=1)
    lse = torch.logsumexp(teacher / T, dim=1)
    pad = torch.arange(width) >= counts.unsqueeze(1)
    rest = None
    if quantized:  # the stored tail beyond each row's own head
        head_mass = torch.where(pad, 0.0, torch.exp(values / T - lse.unsqueeze(1))).sum(dim=1)
        rest = (1 - head_mass).clamp(min=0).unsqueeze(1)
    # Padding as a reader leaves it (top-1 id, smallest logit) and as garbage: neither may matter.
    for pad_index, pad_logit in ((index[:, :1], values.min(dim=1, keepdim=True).values), (index.flip(1), values)):
        targets = TeacherTargets(
            "topk",
            (T,),
            torch.where(pad, pad_index.expand(-1, width), index),
            torch.where(pad, pad_logit.expand(-1, width), values),
            lse.unsqueeze(1),
            rest,
            topk_count=counts,
        )
        s = student.clone().requires_grad_()
        got = bucket_divergence(s, targets, T, kind)
        got.sum().backward()
        for i in range(n):
            c = int(counts[i])
            own = TeacherTargets(
                "topk",
                (T,),
                index[i : i + 1, :c],
                values[i : i + 1, :c],
                lse[i : i + 1, None],
                None if rest is None else rest[i : i + 1],
            )
            s_i = student[i : i + 1].clone().requires_grad_()
            want = bucket_divergence(s_i, own, T, kind)
            want.sum().backward()
            torch.testing.assert_close(got[i : i + 1], want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(s.grad[i : i + 1], s_i.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("quantized", [False, True])
def test_rows_that_hold_every_class_have_no_rest_whatever_the_rounding(quantized):
    """An adaptive head that reaches the whole vocabulary (or a quantized store at k = V, whose stored
    tail is rounding noise) is the dense KD: a rest of ~1e-7 against the student's empty rest must
    not blow the loss up."""
    g = torch.Generator().manual_seed(5)
    n, vocab, T = 16, 10, 1.0
    teacher = torch.randn(n, vocab, generator=g) * 3
    student = torch.randn(n, vocab, generator=g)
    values, index = teacher.topk(vocab, dim=1)
    lse = torch.logsumexp(teacher / T, dim=1)
    rest = torch.full((n, 1), 4e-7) if quantized else None  # what a float16 log_rest of 1 - sum leaves
    counts = torch.full((n,), vocab)
    counts[::2] = vocab - 1  # and rows of one class fewer, next to them
    targets = TeacherTargets("topk", (T,), index, values, lse.unsqueeze(1), rest, topk_count=counts)
    got = bucket_divergence(student, targets, T)
    full = counts == vocab
    torch.testing.assert_close(got[full].double(), full_softmax_kd(student, teacher, T)[full], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(got).all() and got.max() < 10


def _targets_of_every_selection(teacher: torch.Tensor, T: float, g: torch.Generator) -> dict[str, TeacherTargets]:
    """topk, adaptive topk (quantized: a stored rest), sample and hybrid targets of the same teacher rows."""
    n, k = teacher.shape[0], 6
    values, index = teacher.topk(k, dim=1)
    lse = torch.logsumexp(teacher / T, dim=1, keepdim=True)
    counts = torch.randint(1, k + 1, (n,), generator=g)
    pad = torch.arange(k) >= counts.unsqueeze(1)
    head_mass = torch.where(pad, 0.0, torch.exp(values / T - lse)).sum(dim=1, keepdim=True)
    draws = torch.multinomial(torch.softmax(teacher / T, dim=1), 5, replacement=True, generator=g)
    ones = torch.ones_like(draws)
    return {
        "topk": TeacherTargets("topk", (T,), index, values, lse),
        "adaptive": TeacherTargets("topk", (T,), index, values, lse, (1 - head_mass).clamp(min=0), topk_count=counts),
        "sample": TeacherTargets("sample", (T,), index, values, lse, sample_index=draws, sample_count=ones),
        "hybrid": TeacherTargets("hybrid", (T,), index, values, lse, sample_index=draws, sample_count=ones),
    }


@pytest.mark.parametrize(
    "selection, kind",
    [
        ("topk", "kl"),
        ("topk", "jsd"),
        ("adaptive", "kl"),
        ("adaptive", "reverse-kl"),
        ("sample", "kl"),
        ("hybrid", "kl"),
    ],
)
@pytest.mark.parametrize("with_head", [False, True])
def test_chunked_loss_has_the_values_and_gradients_of_the_whole_loss(selection, kind, with_head):
    """Chunks of 7 positions (the last one short) against one piece: the same loss, KD and CE, and the
    same gradients for the hidden states and the output layer (or for the logits)."""
    from trainer.student.losses import chunked_distillation_loss

    g = torch.Generator().manual_seed(5)
    n, d, vocab, T = 30, 8, 40, 2.0
    teacher = torch.randn(n, vocab, generator=g) * 3
    targets = _targets_of_every_selection(teacher, T, g)[selection]
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[::4] = -1  # some positions without a label
    hidden = torch.randn(n, d if with_head else vocab, generator=g)
    head = torch.nn.Linear(d, vocab, bias=False) if with_head else None
    results = []
    for chunk in (0, 7):
        x = hidden.clone().requires_grad_()
        if head is not None:
            head.zero_grad()
        parts = chunked_distillation_loss(
            x, labels, targets, head=head, chunk=chunk, temperature=T, alpha=0.7, kind=kind
        )
        parts.loss.backward()
        results.append((parts, x.grad.clone(), None if head is None else head.weight.grad.clone()))
    (whole, whole_x, whole_w), (chunked, chunked_x, chunked_w) = results
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert whole.loss > 0 and whole.ce > 0
    torch.testing.assert_close(chunked_x, whole_x, rtol=1e-4, atol=1e-7)
    if head is not None:
        torch.testing.assert_close(chunked_w, whole_w, rtol=1e-4, atol=1e-7)


def test_chunked_loss_is_exactly_the_whole_loss_in_one_piece():
    from trainer.student.losses import chunked_distillation_loss

    g = torch.Generator().manual_seed(6)
    teacher, student = torch.randn(10, 20, generator=g), torch.randn(10, 20, generator=g)
    labels = torch.randint(0, 20, (10,), generator=g)
    targets = stored(teacher, 4, 1.0)
    want = distillation_loss(student, labels, targets, temperature=1.0, alpha=0.5)
    for chunk in (0, 10, 64):
        got = chunked_distillation_loss(student, labels, targets, chunk=chunk, temperature=1.0, alpha=0.5)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
