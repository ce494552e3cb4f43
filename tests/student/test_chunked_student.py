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


def test_an_hf_config_student_with_dropout_still_splits_at_its_output_layer(tmp_path):
    """from_config leaves the model training (dropout on): the probe runs in eval mode and restores it."""
    import json

    from trainer.inputs.models import build_model

    config = {"model_type": "gpt2", "vocab_size": 64, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}
    (tmp_path / "gpt2.json").write_text(json.dumps({**config, "resid_pdrop": 0.5, "embd_pdrop": 0.5}))
    model = build_model(f"hf-config:{tmp_path / 'gpt2.json'}", "--student")
    model.train()
    assert splits_at_the_output_layer(model) and model.training


def test_a_micro_batch_without_positions_adds_nothing():
    empty = torch.zeros(0, 5, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.int64)
    targets = TeacherTargets.exact(torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, 2), torch.zeros(0), 1.0)
    parts = chunked_distillation_loss(empty, labels, targets, chunk=0, temperature=1.0, alpha=0.5, totals=(10, 4))
    assert parts.loss.item() == 0.0 and parts.kd.item() == 0.0
    parts.loss.backward()
