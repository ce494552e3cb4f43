"""A student's optimiser step: gradient accumulation equals one larger batch, clipping, the
learning-rate schedules, bf16 autocast (one Student, no Ray Train: its model is used unwrapped)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.student.batches import Batch
from trainer.student.config import Optimisation, StudentSettings, TrainConfig
from trainer.student.students import Student, lr_factor
from trainer.student.targets import TeacherTargets


def settings(student: str = "digits-mlp") -> StudentSettings:
    return StudentSettings(student, lr=0.01, weight_decay=1e-4, temperature=2.0, alpha=0.7, loss="kl", jsd_beta=0.5)


def digits_batch(rows: slice, g_seed: int = 0) -> Batch:
    """Rows of one fixed random digits-shaped batch of 32 (features [64], 10 classes, a top-4 store)."""
    g = torch.Generator().manual_seed(g_seed)
    features = torch.rand(32, 64, generator=g) * 16
    teacher = torch.randn(32, 10, generator=g) * 3
    labels = torch.randint(0, 10, (32,), generator=g)
    labels[5] = -1  # a sample without a label
    values, index = teacher.topk(4, dim=1)
    lse = torch.logsumexp(teacher / 2.0, dim=1, keepdim=True)
    targets = TeacherTargets("topk", (2.0,), index, values, lse).rows(rows)
    ids = torch.arange(32)[rows]
    return Batch(ids, features[rows], labels[rows], None, targets, torch.zeros_like(ids))


def gpt_batch(lengths: list[int], seed: int) -> Batch:
    """A sequence batch of the built-in GPT student's shape (V = 256), blocks of `lengths` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (len(lengths), 16), generator=g)
    valid = torch.arange(16) < torch.tensor(lengths).unsqueeze(1)
    n = int(valid.sum())
    teacher = torch.randn(n, 256, generator=g) * 2
    values, index = teacher.topk(8, dim=1)
    targets = TeacherTargets("topk", (2.0,), index, values, torch.logsumexp(teacher / 2.0, dim=1, keepdim=True))
    labels = torch.randint(0, 256, (n,), generator=g)
    return Batch(torch.arange(len(lengths)), ids, labels, valid, targets, torch.zeros(len(lengths), dtype=torch.int64))


def first_step(student_spec: str, batches: list[Batch], **optimisation) -> tuple[dict, torch.Tensor, dict]:
    """-> (weights after the first step, its totals, the gradients it stepped with)."""
    student = Student(settings(student_spec), seed=0, epochs=3, optimisation=Optimisation(**optimisation))
    student.prepare(wrap=lambda model: model)
    totals = student.step(batches)
    grads = {k: p.grad.clone() for k, p in student.module.named_parameters()}
    return {k: v.detach().clone() for k, v in student.module.state_dict().items()}, totals, grads


def test_four_batches_of_8_accumulated_take_the_step_of_one_batch_of_32():
    whole, whole_totals, whole_grads = first_step("digits-mlp", [digits_batch(slice(0, 32))])
    parts = [digits_batch(slice(s, s + 8)) for s in range(0, 32, 8)]
    accumulated, acc_totals, acc_grads = first_step("digits-mlp", parts, grad_accum=4)
    start = Student(settings(), seed=0, epochs=3).module.state_dict()
    for name in whole:
        torch.testing.assert_close(acc_grads[name], whole_grads[name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-5, atol=1e-7)
        assert not torch.equal(whole[name], start[name])
    torch.testing.assert_close(acc_totals, whole_totals, rtol=1e-5, atol=1e-6)
    # the mean of per-batch means would differ: one batch without a label (sample 5) has 7 labelled of 8
    assert whole_totals[2] > 0


def test_accumulated_sequence_batches_weigh_every_position_alike():
    """Blocks of different lengths: the accumulated step is the step of their union, not a mean of
    per-batch means (a batch of 3 positions must not weigh as much as one of 30)."""
    lengths = [16, 3, 12, 9]
    union = gpt_batch(lengths, seed=1)
    offsets = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    pieces = []
    for i in range(len(lengths)):
        rows = slice(offsets[i], offsets[i + 1])
        pieces.append(
            Batch(
                union.ids[i : i + 1],
                union.inputs[i : i + 1],
                union.labels[rows],
                union.valid[i : i + 1],
                union.targets.rows(rows),
                union.shard[i : i + 1],
            )
        )
    _, whole_totals, whole = first_step("stdlib-gpt-student", [union])
    _, acc_totals, accumulated = first_step("stdlib-gpt-student", pieces, grad_accum=4)
    # The gradients (AdamW's first step turns float noise in an analytically-zero gradient, the
    # attention keys' bias, into a full +-lr move, so the weights after it are no test).
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-7, msg=name)
    torch.testing.assert_close(acc_totals, whole_totals, rtol=1e-5, atol=1e-5)


def global_norm(grads: dict) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))


def test_clipping_scales_the_gradients_to_the_norm_and_bf16_keeps_fp32_weights():
    batch = [digits_batch(slice(0, 32))]
    _, _, free = first_step("digits-mlp", batch)
    _, _, clipped = first_step("digits-mlp", batch, clip_grad_norm=0.5)
    assert global_norm(free) > 1.0 and global_norm(clipped) == pytest.approx(0.5, rel=1e-5)
    scale = 0.5 / global_norm(free)
    for name in free:
        torch.testing.assert_close(clipped[name], free[name] * scale, rtol=1e-5, atol=1e-8)
    weights, totals, bf16 = first_step("digits-mlp", batch, precision="bf16")
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())  # fp32 master weights
    # bf16's 8-bit mantissa: the gradients point the same way as fp32's
    cosine = sum((bf16[k].double() * free[k].double()).sum() for k in free) / (global_norm(bf16) * global_norm(free))
    assert cosine > 0.99 and torch.isfinite(totals).all()


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "epoch-cosine"])
def test_schedules_warm_up_then_decay_to_their_end(schedule):
    o = Optimisation(lr_schedule=schedule, warmup_steps=10, total_steps=100)
    factors = [lr_factor(i, o, epochs=4) for i in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(factors[:10], factors[1:10]))  # warmup rises
    if schedule == "constant":
        assert factors[-1] == 1.0
    else:
        assert all(a >= b - 1e-12 for a, b in zip(factors[10:], factors[11:]))  # then never rises
        assert factors[-1] < (0.05 if schedule != "epoch-cosine" else 0.2)
    if schedule == "epoch-cosine":  # constant within an epoch of 25 steps, cosine over the 4 epochs
        assert factors[30] == factors[49] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_the_default_schedule_is_todays_cosine_over_epochs():
    student = Student(settings(), seed=0, epochs=4)
    student.prepare(wrap=lambda model: model)
    assert isinstance(student.schedule, torch.optim.lr_scheduler.CosineAnnealingLR)
    lrs = []
    for _ in range(4):
        lrs.append(student.optimizer.param_groups[0]["lr"])
        student.optimizer.step()  # (no gradients: a no-op, in the order torch expects)
        student.end_epoch()
    assert lrs == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])


def test_bad_optimisation_flags_are_each_reported():
    cfg = TrainConfig.from_flags(
        grad_accum=0, clip_grad_norm=-1, warmup_steps=-2, adam_beta1=1.0, adam_eps=0.0, loss_chunk=-1
    )
    cfg = cfg.with_flags(threads_per_worker=-1)
    problems = "\n".join(cfg.validate())
    flags = ("--grad-accum", "--clip-grad-norm", "--warmup-steps", "--adam-beta1", "--adam-eps", "--loss-chunk")
    for flag in (*flags, "--threads-per-worker"):
        assert flag in problems, flag


def test_gradient_checkpointing_gives_an_hf_students_gradients_and_refuses_other_students(tmp_path):
    """transformers' gradient checkpointing recomputes the layers in the backward: the same
    gradients (V = 256 Llama student, the GPT batch's shape); a non-HF student is refused."""
    import json

    from trainer.errors import ModelError

    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 256,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32,
    }
    (tmp_path / "student.json").write_text(json.dumps(config))
    spec = f"hf-config:{tmp_path / 'student.json'}"
    batch = gpt_batch([16, 3, 12, 9], seed=2)
    _, plain_totals, plain = first_step(spec, [batch])
    _, ckpt_totals, recomputed = first_step(spec, [batch], gradient_checkpointing=True)
    student = Student(settings(spec), seed=0, epochs=3, optimisation=Optimisation(gradient_checkpointing=True))
    assert student.module.model.is_gradient_checkpointing
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(ckpt_totals, plain_totals)
    with pytest.raises(ModelError, match="--gradient-checkpointing needs a Hugging Face student"):
        Student(settings("digits-mlp"), seed=0, epochs=3, optimisation=Optimisation(gradient_checkpointing=True))
