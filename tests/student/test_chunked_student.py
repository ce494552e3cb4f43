"""A student that exposes its output layer trains on chunks of hidden states: the same loss and
gradients as its whole logits, and eval in chunks gives the same metrics."""

from __future__ import annotations

import torch

from trainer.builtin.stdlib.gpt import GPT, GPTConfig
from trainer.inputs.models import splits_at_the_output_layer
from trainer.student.losses import chunked_distillation_loss, distillation_loss
from trainer.student.targets import TeacherTargets


def test_the_builtin_gpt_splits_at_its_output_layer_and_a_plain_module_does_not():
    gpt = GPT(GPTConfig(vocab_size=64, seq_len=16, width=16, depth=1, heads=2))
    ids = torch.randint(0, 64, (2, 16))
    assert splits_at_the_output_layer(gpt)
    torch.testing.assert_close(gpt.output_layer(gpt(ids, hidden=True)), gpt(ids))
    assert not splits_at_the_output_layer(torch.nn.Linear(4, 3))


def test_a_gpt_student_on_chunks_of_hidden_states_has_the_gradients_of_its_whole_logits():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, seq_len=16, width=16, depth=2, heads=2))
    ids = torch.randint(0, 64, (3, 16))
    valid = torch.ones(3, 16, dtype=torch.bool)
    valid[1, 10:] = False  # a shorter block
    teacher = torch.randn(int(valid.sum()), 64) * 2
    values, index = teacher.topk(8, dim=1)
    targets = TeacherTargets.exact(index, values, torch.logsumexp(teacher / 2.0, dim=1), 2.0)
    labels = torch.randint(0, 64, (int(valid.sum()),))
    grads = []
    for chunked in (False, True):
        gpt.zero_grad()
        if chunked:
            parts = chunked_distillation_loss(
                gpt(ids, hidden=True)[valid],
                labels,
                targets,
                head=gpt.output_layer,
                chunk=5,
                temperature=2.0,
                alpha=0.5,
            )
        else:
            parts = distillation_loss(gpt(ids)[valid], labels, targets, temperature=2.0, alpha=0.5)
        parts.loss.backward()
        grads.append((parts.loss.detach(), {n: p.grad.clone() for n, p in gpt.named_parameters()}))
    (loss_a, a), (loss_b, b) = grads
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)
