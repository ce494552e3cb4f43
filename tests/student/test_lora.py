"""LoRA students (--lora-r, peft): only the adapters train; the export is the adapter, or the merged
model with the adapter beside it; peft and plain transformers reload both, and the merged model's
outputs equal the base model's with the adapter; a run under DDP (2 workers)."""

from __future__ import annotations

import json

import pytest
import torch

from jobs import train_student
from tests.helpers import run, tiny_chat_tokenizer, tiny_llama, write_jsonl
from tests.teacher.test_text_data import CHAT
from trainer.student.config import StudentSettings, TrainConfig
from trainer.student.export import export_student
from trainer.student.students import build_student


def lora_settings(spec: str, **lora) -> StudentSettings:
    return StudentSettings(spec, 0.01, 0.0, 1.0, 0.5, "kl", 0.5, lora_r=4, **lora)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_only_the_adapters_train_and_both_exports_reload(tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    spec = tiny_llama(tmp_path / "base", 60, max_positions=32)
    model = build_student(lora_settings(spec, lora_targets="q_proj,v_proj"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
    with torch.no_grad():  # a trained adapter: B is no longer 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        want = model.eval()(ids)
    adapter = export_student(model, tmp_path / "adapter-only", None)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tmp_path / "base"
    )
    merged = export_student(model, tmp_path / "merged", None, merge_lora=True)
    assert (merged / "config.json").is_file() and (merged / "adapter" / "adapter_config.json").is_file()
    base = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), ids)
    for loaded in (
        AutoPeftModelForCausalLM.from_pretrained(adapter),  # peft: the base from adapter_config, the adapter on it
        AutoModelForCausalLM.from_pretrained(adapter),  # plain transformers, with peft installed
        AutoModelForCausalLM.from_pretrained(merged),  # plain transformers: the merged weights, no peft needed
    ):
        torch.testing.assert_close(logits(loaded, ids), want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base, want, atol=1e-3)  # the adapter does change the outputs


def test_lora_flags_are_checked(digits_stores):
    def problems(**flags):
        cfg = TrainConfig.from_flags(store=digits_stores["train"], dataset="digits", output="", **flags)
        return " | ".join(cfg.run_problems())

    assert "--student digits-mlp is not one: drop --lora-r" in problems(student="digits-mlp", lora_r=4)
    assert "--lora-r must be >= 0" in problems(student="digits-mlp", lora_r=-1)
    assert "--merge-lora merges LoRA adapters: add --lora-r" in problems(student="digits-mlp", merge_lora=True)


def lora_run(dump, tmp_path, capsys, *flags: str) -> tuple:
    """A LoRA student (--lora-r 4 --merge-lora) trained on 2 workers from a tiny Llama's chat store
    -> (the run's directory, the student's base directory)."""
    tok = tiny_chat_tokenizer(tmp_path / "teacher")
    tiny_llama(tmp_path / "teacher", len(tok), max_positions=128, init_std=0.2)
    store = dump(teacher=f"hf:{tmp_path / 'teacher'}", dataset=write_jsonl(tmp_path / "chat.jsonl", CHAT * 4),
                 top_k=8, seq_len=64)  # fmt: skip
    tiny_llama(tmp_path / "student", len(tok), max_positions=128, seed=1)
    out = tmp_path / "run"
    argv = ["--store", store, "--student", f"hf:{tmp_path / 'student'}", "--output", str(out), "--epochs", "2"]
    argv += ["--batch-size", "2", "--lr", "0.05", "--lora-r", "4", "--merge-lora", "--workers", "2", *flags]
    code, errors = run(train_student.main, argv, capsys)
    assert code == 0, errors
    return out, tmp_path / "student"


@pytest.mark.battery  # CI: tests/student/test_feature_distillation.py trains a LoRA student under DDP
def test_a_lora_student_trains_under_ddp_and_its_merged_export_is_base_plus_adapter(dump, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, base = lora_run(dump, tmp_path, capsys)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["lora_r"] == 4 and metrics["train_loss"] > 0
    ids = torch.as_tensor([[1, 5, 9, 2, 7, 3]])
    with_adapter = logits(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "student" / "adapter"), ids
    )
    merged = logits(AutoModelForCausalLM.from_pretrained(out / "student"), ids)
    torch.testing.assert_close(merged, with_adapter, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(AutoModelForCausalLM.from_pretrained(base), ids), merged, atol=1e-4)
    assert (out / "student" / "tokenizer.json").is_file()  # the store's tokenizer beside the merged model


@pytest.mark.battery
def test_a_lora_student_trains_under_fsdp(dump, tmp_path, capsys):
    """--strategy fsdp shards the frozen base and the adapters alike; the final export merges."""
    from transformers import AutoModelForCausalLM

    out, base = lora_run(dump, tmp_path, capsys, "--strategy", "fsdp")
    ids = torch.as_tensor([[1, 5, 9, 2, 7, 3]])
    assert not torch.allclose(
        logits(AutoModelForCausalLM.from_pretrained(base), ids),
        logits(AutoModelForCausalLM.from_pretrained(out / "student"), ids),
        atol=1e-4,
    )
