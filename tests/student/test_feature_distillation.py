"""Feature distillation from stored teacher features: the loss against its plain formula, the
maps, the flags' checks, and a run that trains a student on them beside one that does not."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from jobs import train_student
from logitstore.features import dequantize, quantize
from tests.helpers import run, tiny_chat_tokenizer, tiny_llama, write_jsonl
from tests.teacher.test_text_data import CHAT
from trainer.student.config import TrainConfig, parse_feature_map
from trainer.student.features import FeatureMaps, StoredFeatures, dequantized, feature_loss


def test_the_feature_loss_is_the_plain_formula():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)]
    t = torch.randn(6, 3, 4, generator=g)
    mse = np.mean([np.mean([((s[i][n] - t[n, c]) ** 2).mean().item() for n in range(6)]) for i, c in ((0, 2), (1, 0))])
    assert feature_loss(s, t, [2, 0], "mse").item() == pytest.approx(mse, rel=1e-6)
    cos = [
        1 - (s[i][n] @ t[n, c]).item() / (s[i][n].norm().item() * t[n, c].norm().item())
        for i, c in ((0, 2), (1, 0))
        for n in range(6)
    ]
    assert feature_loss(s, t, [2, 0], "cosine").item() == pytest.approx(np.mean(cos), rel=1e-5)


def test_maps_start_as_the_identity_where_the_widths_agree_and_dequantize_as_the_store_does():
    rng = np.random.default_rng(1)
    projection = (rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32))
    stored = StoredFeatures(layers=(4, 9), widths=(8, 5), projection=projection)
    maps = FeatureMaps([(2, 9), (3, 4)], (5, 6), stored)  # student widths 5 and 6
    assert maps.columns == [1, 0]
    h = [torch.randn(7, 5), torch.randn(7, 6)]
    out = maps(h)
    assert torch.allclose(out[0], h[0] @ torch.from_numpy(projection[1]), atol=1e-6)  # 5 = 5: the identity
    assert out[1].shape == (7, 3) and maps.maps[1].weight.shape == (8, 6)  # 6 -> 8: learned from random
    assert set(maps.state_dict()) == {"maps.0.weight", "maps.1.weight"}  # the projections are the store's
    y = rng.normal(size=(10, 6)).astype(np.float32)
    codes, scale = quantize(y.reshape(20, 3))
    codes, scale = codes.reshape(10, 6), scale.reshape(10, 2)
    np.testing.assert_array_equal(
        dequantized(torch.from_numpy(codes), torch.from_numpy(scale)).reshape(10, 6).numpy(), dequantize(codes, scale)
    )


def test_parse_feature_map():
    assert parse_feature_map("10:12, 17:25") == ([(10, 12), (17, 25)], [])
    assert parse_feature_map("10-12")[1] and parse_feature_map("1:-2")[1] and parse_feature_map(",")[1]


def test_feature_flags_are_checked_against_the_store(digits_stores, dump):
    featured = dump(teacher="digits-cnn", dataset="digits-eval", top_k=3, hidden_layers="3,2", hidden_dim=16)

    def problems(store, *flags):
        dataset = "digits" if store == digits_stores["train"] else "digits-eval"
        cfg = TrainConfig.from_flags(store=store, dataset=dataset, student="digits-mlp", output="", **dict(flags))
        return " | ".join(cfg.run_problems())

    assert "the store has none: dump it with --hidden-layers 3" in problems(
        digits_stores["train"], ("feature_map", "1:3")
    )
    assert "teacher layer 1, which the store does not hold (it holds 3,2)" in problems(featured, ("feature_map", "1:1"))
    assert "not built for --strategy fsdp" in problems(featured, ("feature_map", "1:3"), ("strategy", "fsdp"))
    assert "--feature-weight must be >= 0" in problems(featured, ("feature_map", "1:3"), ("feature_weight", -1.0))
    assert problems(featured, ("feature_map", "1:3")) == ""
    assert problems(digits_stores["train"], ("feature_map", "1:3"), ("feature_weight", 0.0)) == ""  # off


def test_two_students_under_ddp_one_on_the_teachers_features_one_a_lora_adapter(dump, tmp_path, monkeypatch, capsys):
    """One run, 2 workers (DDP), two hf: students of the teacher's width on the same batches: the
    first trains on the stored features (per token) and reports its feature loss, which falls, in
    metrics.json and steps.csv; the second, without features, trains a LoRA adapter (--lora-r 4
    --merge-lora): its export is the merged model, whose outputs equal the base's with the adapter
    in student-1/adapter/. Relative paths, as a user types them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    teacher = tmp_path / "teacher"
    tok = tiny_chat_tokenizer(teacher)
    tiny_llama(teacher, len(tok), max_positions=128, init_std=0.2)
    store = dump(teacher=f"hf:{teacher}", dataset=write_jsonl(tmp_path / "chat.jsonl", CHAT * 6), top_k=8,
                 seq_len=64, hidden_layers="0,1", hidden_dim=8)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    shutil.copytree(store, "store")
    tiny_llama(tmp_path / "models" / "student", len(tok), max_positions=128, seed=1)
    argv = ["--store", "store", "--student", "hf:models/student", "--output", "run", "--epochs", "3"]
    argv += ["--batch-size", "4", "--lr", "0.01", "--feature-map", "1:1,0:0", "--feature-weight", "2"]
    argv += ["--variants", '[{}, {"feature_weight": 0, "lora_r": 4, "lr": 0.05}]', "--merge-lora"]
    argv += ["--workers", "2", "--log-every", "1", "--log-to", "csv"]
    code, errors = run(train_student.main, argv, capsys)
    assert code == 0, errors
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    first, second = metrics["students"]
    assert first["train_feature_loss"] > 0 and second["train_feature_loss"] is None
    per_epoch = [e["students"][0]["train_feature_loss"] for e in metrics["epochs"]]
    assert per_epoch[-1] < per_epoch[0]
    with open(tmp_path / "run" / "logs" / "steps.csv") as fh:
        steps = list(csv.DictReader(fh))
    assert steps and all(float(row["feature"]) > 0 for row in steps)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["feature_map"] == "1:1,0:0" and config["feature_loss"] == "mse"
    # the LoRA student: merged = base + adapter; the adapter trained
    ids = torch.as_tensor([[1, 5, 9, 2, 7, 3]])
    base = AutoModelForCausalLM.from_pretrained("models/student").eval()
    with torch.no_grad():
        before = base(ids).logits
        with_adapter = PeftModel.from_pretrained(base, "run/student-1/adapter").eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained("run/student-1").eval()(ids).logits
    torch.testing.assert_close(merged, with_adapter, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, merged, atol=1e-4)
    assert (tmp_path / "run" / "student-0" / "model.safetensors").is_file()  # not a LoRA student: whole


def test_with_features_four_accumulated_batches_of_8_take_the_step_of_one_batch_of_32():
    """The feature loss is a mean over positions like KD and CE: accumulated, each batch adds its
    share; the maps' gradients (outside the model's wrapper) step with the rest."""
    from dataclasses import replace

    from tests.student.test_optimisation import digits_batch, settings
    from trainer.student.config import Optimisation
    from trainer.student.students import Student

    rng = np.random.default_rng(3)
    stored = StoredFeatures(
        layers=(3,), widths=(24,), projection=(np.linalg.qr(rng.normal(size=(24, 5)))[0].astype(np.float32),)
    )
    y = torch.from_numpy(rng.normal(size=(32, 1, 5)).astype(np.float32))

    def batch(rows: slice):
        b = digits_batch(rows)
        return replace(b, targets=replace(b.targets, features=y[rows]))

    def first_step(batches, **optimisation):
        chosen = replace(settings(), feature_map="1:3", feature_weight=0.5, feature_loss="cosine")
        student = Student(chosen, seed=0, epochs=3, optimisation=Optimisation(**optimisation), stored_features=stored)
        student.prepare(wrap=lambda model: model)
        totals = student.step(batches)
        return student, totals

    whole, whole_totals = first_step([batch(slice(0, 32))])
    parts, part_totals = first_step([batch(slice(s, s + 8)) for s in range(0, 32, 8)], grad_accum=4)
    assert whole_totals[3] > 0 and whole_totals.shape == (5,)
    torch.testing.assert_close(part_totals, whole_totals, rtol=1e-5, atol=1e-6)
    for a, b in ((whole.module, parts.module), (whole.feature_maps, parts.feature_maps)):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=name)
    start = Student(replace(settings(), feature_map="1:3"), seed=0, epochs=3, stored_features=stored).feature_maps
    assert not torch.equal(start.maps[0].weight, whole.feature_maps.maps[0].weight)  # the map learned too
    assert whole.state()["feature_maps"].keys() == {"maps.0.weight"}
