"""Every config file in examples/ loads and validates against the stores it names; a run's saved
config.json is a config file too (checked in tests/student/test_train.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cli import parse_config
from trainer.student.config import TrainConfig
from trainer.student.sweep import SweepConfig
from trainer.teacher.config import DumpConfig

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
JOBS = {"dump": DumpConfig, "train": TrainConfig, "sweep": SweepConfig}


def test_there_are_examples_of_every_job():
    assert {p.stem.rsplit("-", 1)[1] for p in EXAMPLES} == set(JOBS)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_an_example_config_is_valid(example, digits_stores, dump, lm_teacher, tmp_path, monkeypatch):
    job = example.stem.rsplit("-", 1)[1]
    (tmp_path / "stores").mkdir()
    if job != "dump":  # the stores a student example reads (a dump example makes its own)
        lm = dump(teacher="lm_models:tiny_gpt", dataset="stdlib-small-eval", top_k=8, format="zarr", shard_size=128)
        targets = {
            "digits-train": digits_stores["train"],
            "digits-eval": digits_stores["eval"],
            "lm": lm,
            "lm-eval": lm,
        }
        for name, target in targets.items():
            (tmp_path / "stores" / name).symlink_to(target)
    monkeypatch.chdir(tmp_path)  # the examples name paths relative to the repository root
    cfg = parse_config(JOBS[job], ["--config", str(example)], "example")
    assert cfg.validate() == []
