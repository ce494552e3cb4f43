"""A Ray Tune sweep over one store (the teacher's weights gone), with a run whose worker died retried
and a run that raised not, and a student trained with others in one run equal to the same student
trained alone."""

from __future__ import annotations

import csv
import json

import pytest
import safetensors.torch
import torch

from jobs import sweep, train_student
from trainer.builtin import digits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stores(digits_stores):
    found = dict(digits_stores)
    weights = digits.teacher_cache_path()
    hidden = weights.with_suffix(".hidden")
    weights.rename(hidden)  # a sweep must never need the teacher
    yield found
    hidden.rename(weights)


@pytest.fixture(scope="module")
def finished_sweep(stores, user_modules, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    flag = root / "failed-once"
    # A smaller student whose process dies at its first training step anywhere: its run must be
    # retried by Tune (an exception raised by Python code is not: it would be raised again).
    user_modules(
        "flaky_students",
        f"""
        import os, signal
        from pathlib import Path
        from trainer.builtin.digits import DigitsMLP

        class Flaky(DigitsMLP):
            def forward(self, x):
                if self.training and not Path({str(flag)!r}).exists():
                    Path({str(flag)!r}).write_text("failed")
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().forward(x)

        def student():
            return Flaky(hidden=8)
    """,
    )
    config = root / "sweep.yaml"
    config.write_text(f"""
store: {stores["train"]}
dataset: digits-fewlabels
eval-dataset: digits-eval
eval-store: {stores["eval"]}
student: digits-mlp
epochs: 2
output: {root / "out"}
space:
  temperature: {{grid: [2, 4]}}
  student: {{grid: [digits-mlp, "flaky_students:student"]}}
  lr: {{loguniform: [0.003, 0.03]}}
students-per-run: 2
max-concurrent: 2
max-retries: 1
""")
    assert sweep.main(["--config", str(config)]) == 0
    assert flag.exists()
    assert not digits.teacher_cache_path().exists()  # the teacher never ran
    return root / "out"


def test_a_sweep_trains_every_trial_from_one_store_and_keeps_the_best(finished_sweep):
    rows = list(csv.DictReader((finished_sweep / "results.csv").open()))
    assert len(rows) == 4 and {r["run"] for r in rows} == {"0", "1"}  # 2 runs of 2 students
    assert sorted((float(r["temperature"]), r["student"]) for r in rows) == sorted(
        (t, s) for t in (2.0, 4.0) for s in ("digits-mlp", "flaky_students:student")
    )
    assert all(0.003 <= float(r["lr"]) <= 0.03 for r in rows)
    assert all(float(r["eval_accuracy"]) > 0.2 for r in rows)  # 2 epochs: above chance (0.1)
    assert (finished_sweep / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| trial |" in (finished_sweep / "results.md").read_text()

    best = json.loads((finished_sweep / "best" / "trial.json").read_text())
    assert best["eval_accuracy"] == max(float(r["eval_accuracy"]) for r in rows)
    student = digits.DigitsMLP(hidden=16 if best["student"] == "digits-mlp" else 8)
    student.load_state_dict(torch.load(finished_sweep / "best" / "model.pt", weights_only=True))
    split = digits.load_split("eval")
    with torch.no_grad():
        pred = student(torch.from_numpy(split["features"])).argmax(1).numpy()
    assert (pred == split["label"]).mean() == pytest.approx(best["eval_accuracy"])
    # the exported student (safetensors) is the same model
    exported = digits.DigitsMLP(hidden=16 if best["student"] == "digits-mlp" else 8)
    safetensors.torch.load_model(exported, str(finished_sweep / "best" / "student" / "model.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), student.state_dict().values()))
    saved = json.loads((finished_sweep / "config.json").read_text())
    assert saved["students_per_run"] == 2 and len(json.loads((finished_sweep / "trials.json").read_text())) == 4

    assert (
        sweep.main(["--config", str(finished_sweep.parent / "sweep.yaml")]) == 2
    )  # finished: refused without --overwrite


def test_a_student_trained_with_others_equals_it_trained_alone(stores, finished_sweep, tmp_path):
    """One read of the store feeding several students changes nothing for each: same seed, same data
    order, same numbers, to the last bit."""
    row = next(r for r in csv.DictReader((finished_sweep / "results.csv").open()) if r["student"] == "digits-mlp")
    saved = json.loads((finished_sweep / "config.json").read_text())
    argv = [
        "--store",
        stores["train"],
        "--dataset",
        "digits-fewlabels",
        "--eval-dataset",
        "digits-eval",
        "--eval-store",
        stores["eval"],
        "--student",
        "digits-mlp",
        "--output",
        str(tmp_path / "alone"),
        "--epochs",
        "2",
        "--temperature",
        row["temperature"],
        "--lr",
        repr(float(row["lr"])),
        "--cpus-per-worker",
        str(saved["cpus_per_worker"]),
    ]
    assert train_student.main(argv) == 0
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    together = json.loads((finished_sweep / "runs" / f"run-{int(row['run']):03d}" / "metrics.json").read_text())
    mine = next(s for s in together["students"] if s["variant"]["student"] == "digits-mlp")
    for key in ("eval_accuracy", "eval_kl_to_teacher", "train_loss", "train_kd_loss"):
        assert alone[key] == mine[key], key


@pytest.mark.parametrize(
    "space,expected",
    [
        ('{"epochs": {"grid": [1, 2]}}', "'epochs' cannot be swept"),
        ('{"lr": {"loguniform": [0, 1]}}', "loguniform needs [lo, hi] with lo < hi and lo > 0"),
        ('{"temperature": {"grid": [3]}}', "trial [0]: --temperature 3 was not recorded"),
        ('{"loss": {"between": [1, 2]}}', "must be a constant or one of"),
    ],
)
def test_bad_search_spaces_are_reported_before_anything_runs(stores, tmp_path, capsys, space, expected):
    argv = [
        "--store",
        stores["train"],
        "--dataset",
        "digits",
        "--student",
        "digits-mlp",
        "--output",
        str(tmp_path / "s"),
        "--space",
        space,
        "--metric",
        "accuracy",
    ]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "--metric must be eval_accuracy" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.battery  # CI: the same errors in one run, tests/jobs/test_bad_input.py (a damaged shard, a bug)
@pytest.mark.parametrize("fault", ["damaged shard", "bug"])
def test_a_run_that_raises_is_not_retried_and_the_sweep_reports_it(stores, buggy_student, tmp_path, capsys, fault):
    """An exception that Python code raises in a run would be raised again: the run is not retried
    (--max-retries 1), and the sweep ends with it: our own error as its one line (exit 2), a bug as
    the worker's traceback once (exit 1)."""
    import shutil

    store, student, raised = stores["train"], "digits-mlp", None
    if fault == "damaged shard":
        store = tmp_path / "store"
        shutil.copytree(stores["train"], store)
        shutil.rmtree(store / "shards" / "00002.zarr")
    else:
        student, raised = buggy_student
    argv = ["--store", str(store), "--dataset", "digits", "--student", student, "--output", str(tmp_path / "s")]
    argv += ["--space", '{"lr": {"grid": [0.01]}}', "--epochs", "1", "--max-retries", "1"]
    code = sweep.main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    tracebacks = [line for line in err.splitlines() if "Traceback" in line and "PlacementGroupCleaner" not in line]
    if fault == "damaged shard":
        assert code == 2 and len(errors) == 1 and "shards/00002.zarr" in errors[0], err[-3000:]
        assert "is missing" in errors[0] and tracebacks == []
    else:
        assert code == 1 and raised.read_text() == "raised\n", err[-3000:]  # once: not retried
        assert len(tracebacks) == 1 and "IndexError: tuple index out of range" in err and errors == []
