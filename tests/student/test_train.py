"""Students distilled with Ray Train from one store, the teacher's weights gone; and training that
survives a killed worker and a killed driver. Each fit costs ~30 s of fixed overhead: keep them few."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import wandb_history

from jobs import train_student
from jobs.cli import parse_config
from trainer.builtin import digits
from trainer.student.checkpoint import CHECKPOINT_FILE
from trainer.student.config import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stores_without_teacher(digits_stores, teacher_cache):
    stores = dict(digits_stores)
    weights = digits.teacher_cache_path()
    assert weights.exists() and weights.parent == teacher_cache
    hidden = weights.with_suffix(".hidden")
    weights.rename(hidden)  # the training jobs must never need the teacher
    yield stores
    hidden.rename(weights)


def run_student(stores, output: Path, *extra: str, eval_store: bool = True) -> dict:
    argv = [
        "--store",
        stores["train"],
        "--dataset",
        "digits-fewlabels",
        "--eval-dataset",
        "digits-eval",
        *(["--eval-store", stores["eval"]] if eval_store else []),
        "--student",
        "digits-mlp",
        "--output",
        str(output),
        "--epochs",
        "4",
        "--checkpoint-every",
        "2",
        *extra,
    ]
    assert train_student.main(argv) == 0
    assert not digits.teacher_cache_path().exists()
    return json.loads((output / "metrics.json").read_text())


B_ARGS = ("--temperature", "4", "--alpha", "1.0", "--workers", "1")


@pytest.fixture(scope="module")
def undisturbed(stores_without_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "b"
    return out, run_student(stores_without_teacher, out, *B_ARGS)


def check_logs(run: Path, steps: int, every: int, epochs: int) -> None:
    """A run's step log (steps.csv), its TensorBoard events as tensorboard reads them, and curves.png."""
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = list(csv.DictReader((run / "logs" / "steps.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(every, steps + 1, every))
    assert all(float(r["loss"]) > 0 and float(r["positions_per_s"]) > 0 for r in rows)
    events = EventAccumulator(str(run / "logs" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [int(r["step"]) for r in rows]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([float(r["loss"]) for r in rows])
    assert len(events.Scalars("epoch/train_loss")) == epochs and len(events.Scalars("epoch/eval_accuracy")) == 1
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The offline W&B run holds the same step rows, and the epochs' figures at their steps.
    history = wandb_history(run)
    train = [h for h in history if "train/loss" in h]
    assert [h["_step"] for h in train] == [int(r["step"]) for r in rows]
    assert [h["train/loss"] for h in train] == pytest.approx([float(r["loss"]) for r in rows])
    assert sum("epoch/train_loss" in h for h in history) == epochs


def test_two_students_with_different_t_and_alpha_from_one_store(stores_without_teacher, undisturbed, tmp_path):
    """Student a also takes the optimisation flags of LM students: bf16 autocast, 2 batches per
    optimiser step (DDP synchronising once per step), warmup, a per-step schedule, clipping; and
    it is evaluated on held-out labels with no teacher on them (--eval-dataset without
    --eval-store): accuracy and cross-entropy, no teacher metrics (the evaluation used to ask the
    missing store for its temperature, an IndexError raised in every worker)."""
    optimisation = ("--precision", "bf16", "--grad-accum", "2", "--warmup-steps", "3", "--lr-schedule", "linear")
    optimisation += ("--log-every", "3", "--log-to", "csv,tensorboard,wandb")
    a = run_student(
        stores_without_teacher,
        tmp_path / "a",
        *("--temperature", "2", "--alpha", "0.5", "--workers", "2", "--seed", "1", "--clip-grad-norm", "1"),
        *optimisation,
        eval_store=False,
    )
    b_dir, b = undisturbed
    assert a["config"]["precision"] == "bf16" and a["config"]["grad_accum"] == 2
    # 1437 samples in batches of 64 over 2 workers: 11 batches each, 6 optimiser steps of 2 (the last of 1)
    assert [e["train_steps"] for e in a["epochs"]] == [6] * 4 and b["epochs"][0]["train_steps"] == 23
    check_logs(tmp_path / "a", steps=24, every=3, epochs=4)

    for m, T, alpha, workers in ((a, 2.0, 0.5, 2), (b, 4.0, 1.0, 1)):
        assert m["config"]["temperature"] == T and m["config"]["alpha"] == alpha and m["config"]["workers"] == workers
        assert len(m["epochs"]) == 4
        # 4 short epochs of a 1.2k-parameter MLP: far above chance (0.1), not yet converged.
        assert m["eval_accuracy"] > 0.5 and m["eval_cross_entropy"] > 0
        assert m["epochs"][-1]["eval_positions"] == 360  # every digits-eval sample
        assert m["epochs"][-1]["train_kd_loss"] < m["epochs"][0]["train_kd_loss"]
        # Every training row was seen once per epoch (2 workers get equal numbers of batches: the
        # remainder, fewer than `workers` batches of 64, waits for another epoch).
        assert 1437 - (workers - 1) * 64 <= m["epochs"][-1]["train_positions"] <= 1437
        # Where the wall time went: the phases and the epochs add up to it (trainer/student/timing.py).
        parts = (
            m["startup_seconds"]
            + m["epochs_seconds"]
            + sum(m["overhead"][k] for k in ("between_epochs", "after_last_epoch", "outputs"))
        )
        assert parts == pytest.approx(m["wall_seconds"], abs=0.05) and 0 < m["startup_seconds"] < m["wall_seconds"]
        assert m["epochs_seconds"] == pytest.approx(sum(e["epoch_seconds"] for e in m["epochs"]))
        assert all(0 <= e["first_batch_seconds"] <= e["epoch_seconds"] for e in m["epochs"])
    assert b["teacher_agreement"] > 0.5 and b["eval_kl_to_teacher"] > 0
    assert a["teacher_agreement"] is None and a["eval_kl_to_teacher"] is None  # no --eval-store
    # alpha = 1: the CE term is logged but has no weight; alpha = 0.5 mixes both.
    assert b["train_loss"] == pytest.approx(b["train_kd_loss"])
    assert a["train_loss"] == pytest.approx(0.5 * a["train_kd_loss"] + 0.5 * a["train_ce_loss"], rel=0.05)

    for run in (tmp_path / "a", b_dir):
        state = torch.load(run / "checkpoint" / CHECKPOINT_FILE, weights_only=True)
        student = digits.DigitsMLP(hidden=16)
        student.load_state_dict(state)
        rows = digits.load_split("eval")
        with torch.no_grad():
            pred = student(torch.from_numpy(rows["features"])).argmax(1).numpy()
        metrics = json.loads((run / "metrics.json").read_text())
        # The saved checkpoint is the model whose accuracy metrics.json reports.
        assert (pred == rows["label"]).mean() == pytest.approx(metrics["eval_accuracy"])
        saved = json.loads((run / "config.json").read_text())
        assert saved["store"] == stores_without_teacher["train"]
        # The saved config is a config file: it runs the same job again (given --overwrite).
        again = parse_config(TrainConfig, ["--config", str(run / "config.json"), "--overwrite"], "x")
        assert again.validate() == [] and again.to_dict() == {**saved, "overwrite": True}


@pytest.mark.battery  # CI: test_fsdp.py's killed worker resumes from its (sharded) mid-epoch checkpoint
def test_a_killed_training_worker_restarts_from_its_checkpoint(
    stores_without_teacher, undisturbed, user_modules, tmp_path
):
    """The student's process SIGKILLs itself once, mid-epoch 2 (train step 40 of 4 x 23); Ray Train
    restarts the worker group and the loop resumes from the step-10 checkpoint of that epoch."""
    flag = tmp_path / "killed"
    user_modules(
        "suicidal_students",
        f"""
        import os, signal
        from pathlib import Path
        import torch
        from trainer.builtin.digits import DigitsMLP

        class Suicidal(DigitsMLP):
            calls = 0
            def forward(self, x):
                if self.training:
                    Suicidal.calls += 1
                    if Suicidal.calls == 40 and not Path({str(flag)!r}).exists():
                        Path({str(flag)!r}).write_text("killed")
                        os.kill(os.getpid(), signal.SIGKILL)
                return super().forward(x)

        def student():
            return Suicidal(hidden=16)
    """,
    )
    killed = run_student(
        stores_without_teacher,
        tmp_path / "k",
        *B_ARGS,
        "--student",
        "suicidal_students:student",
        "--checkpoint-every-steps",
        "10",
    )
    _, calm = undisturbed
    assert flag.exists()
    assert [e["epoch"] for e in killed["epochs"]] == [1, 2, 3, 4]
    # Ray Train collects reports asynchronously: the restart is from the last checkpoint it had
    # registered before the kill (step 10 or 20 of epoch 1, or 10 of epoch 2), never from scratch.
    resumed = [e["resumed_from"] for e in killed["epochs"] if "resumed_from" in e]
    assert len(resumed) == 1 and (resumed[0]["epoch"], resumed[0]["step"]) in {(0, 10), (0, 20), (1, 10)}
    print(f"eval_accuracy: killed and resumed {killed['eval_accuracy']:.4f}, undisturbed {calm['eval_accuracy']:.4f}")
    # The resumed epochs take the batches of the undisturbed run (the join's EpochClock), so the run
    # ends where it would have.
    assert killed["eval_accuracy"] > 0.5 and killed["eval_accuracy"] == calm["eval_accuracy"]
    assert killed["epochs"][-1]["train_loss"] == pytest.approx(calm["epochs"][-1]["train_loss"], rel=1e-6)


@pytest.mark.battery  # CI: test_a_killed_training_worker_restarts_from_its_checkpoint
def test_rerunning_after_the_driver_died_resumes(stores_without_teacher, tmp_path, capsys):
    out = tmp_path / "d"
    argv = [
        "--store",
        stores_without_teacher["train"],
        "--dataset",
        "digits-fewlabels",
        "--student",
        "digits-mlp",
        "--output",
        str(out),
        "--epochs",
        "20",
        "--temperature",
        "4",
    ]
    driver = subprocess.Popen(
        [sys.executable, "-m", "jobs.train_student", *argv],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.time() + 300
    snapshot = out / "ray" / "train" / "checkpoint_manager_snapshot.json"
    while (
        time.time() < deadline
        and driver.poll() is None
        and not (snapshot.exists() and '"checkpoint_results":[{' in snapshot.read_text().replace(" ", ""))
    ):
        time.sleep(0.2)  # until Ray Train has registered a checkpoint
    assert driver.poll() is None, "the run finished before it could be killed"
    listing = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    for pid, sid in (map(int, line.split()) for line in listing.splitlines()):
        if sid == driver.pid:
            os.kill(pid, signal.SIGKILL)  # the driver and its whole local Ray cluster
    driver.wait()
    assert not (out / "metrics.json").exists()

    assert train_student.main(argv + ["--epochs", "19"]) == 2  # other arguments: refused
    assert "unfinished run with other arguments (they differ in: epochs)" in capsys.readouterr().err
    assert train_student.main(argv) == 0
    assert "resuming the unfinished run" in capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == list(range(1, 21))
    resumed = [e["resumed_from"] for e in m["epochs"] if "resumed_from" in e]
    assert len(resumed) == 1 and resumed[0]["epoch"] >= 1  # not from scratch


def test_finished_run_is_not_overwritten(stores_without_teacher, tmp_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    argv = [
        "--store",
        stores_without_teacher["train"],
        "--dataset",
        "digits",
        "--student",
        "digits-mlp",
        "--output",
        str(out),
    ]
    assert train_student.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == "{}"
