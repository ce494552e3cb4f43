"""Students distilled with Ray Train from one store, the teacher's weights gone. Two fits: keep it that way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs import train_student
from trainer import digits
from trainer.loop import CHECKPOINT_FILE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stores_without_teacher(dump, teacher_cache):
    stores = {
        "train": dump(teacher="digits-cnn", dataset="digits", top_k=5, shard_size=500, workers=1),
        "eval": dump(teacher="digits-cnn", dataset="digits-eval", top_k=10, format="zarr", shard_size=100),
    }
    weights = digits.teacher_cache_path()
    assert weights.exists() and weights.parent == teacher_cache
    hidden = weights.with_suffix(".hidden")
    weights.rename(hidden)  # the training jobs must never need the teacher
    yield stores
    hidden.rename(weights)


def run_student(stores, output: Path, *extra: str) -> dict:
    argv = ["--store", stores["train"], "--dataset", "digits-fewlabels", "--eval-dataset", "digits-eval",
            "--eval-store", stores["eval"], "--student", "digits-mlp", "--output", str(output), "--epochs", "4",
            "--checkpoint-every", "2", *extra]
    assert train_student.main(argv) == 0
    assert not digits.teacher_cache_path().exists()
    return json.loads((output / "metrics.json").read_text())


def test_two_students_with_different_t_and_alpha_from_one_store(stores_without_teacher, tmp_path):
    a = run_student(stores_without_teacher, tmp_path / "a", "--temperature", "2", "--alpha", "0.5", "--workers", "2", "--seed", "1")
    b = run_student(stores_without_teacher, tmp_path / "b", "--temperature", "4", "--alpha", "1.0", "--workers", "1")

    for m, T, alpha, workers in ((a, 2.0, 0.5, 2), (b, 4.0, 1.0, 1)):
        assert m["config"]["temperature"] == T and m["config"]["alpha"] == alpha and m["config"]["workers"] == workers
        assert len(m["epochs"]) == 4
        # 4 short epochs of a 1.2k-parameter MLP: far above chance (0.1), not yet converged.
        assert m["eval_accuracy"] > 0.5
        assert m["teacher_agreement"] > 0.5
        assert m["epochs"][-1]["train_kd_loss"] < m["epochs"][0]["train_kd_loss"]
        # Every training row was seen once per epoch (2-worker splits may drop < workers rows).
        assert 1437 - workers < m["epochs"][-1]["train_positions"] <= 1437
    # alpha = 1: the CE term is logged but has no weight; alpha = 0.5 mixes both.
    assert b["train_loss"] == pytest.approx(b["train_kd_loss"])
    assert a["train_loss"] == pytest.approx(0.5 * a["train_kd_loss"] + 0.5 * a["train_ce_loss"], rel=0.05)

    for run in ("a", "b"):
        state = torch.load(tmp_path / run / "checkpoint" / CHECKPOINT_FILE, weights_only=True)
        student = digits.DigitsMLP(hidden=16)
        student.load_state_dict(state)
        rows = digits.load_split("eval")
        with torch.no_grad():
            pred = student(torch.from_numpy(rows["features"])).argmax(1).numpy()
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        # The saved checkpoint is the model whose accuracy metrics.json reports.
        assert (pred == rows["label"]).mean() == pytest.approx(metrics["eval_accuracy"])
        assert json.loads((tmp_path / run / "config.json").read_text())["store"] == stores_without_teacher["train"]


def test_finished_run_is_not_overwritten(stores_without_teacher, tmp_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    argv = ["--store", stores_without_teacher["train"], "--dataset", "digits", "--student", "digits-mlp", "--output", str(out)]
    assert train_student.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == "{}"
