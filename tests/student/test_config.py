"""The training run's configuration in sections: flags flat on the command line, in config files and
in a run's config.json; what a resume may change; a sweep's config holding a run's; and the
stores of a run, whose first shard is read once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli import parse_config
from trainer.errors import DataError
from trainer.student.config import Data, TrainConfig
from trainer.student.sweep import SweepConfig

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"

RESUME_FREE = {
    "overwrite",
    "max_failures",
    "log_every",
    "log_to",
    "loss_chunk",
    "eval_batch_size",
    "worker_resources",
    "verbose",
}


def test_the_sections_flags_are_flat_everywhere(tmp_path):
    store, out = str(tmp_path / "s"), str(tmp_path / "o")
    cfg = parse_config(TrainConfig, ["--store", store, "--lr", "0.5", "--workers", "3", "--log-to", "csv"], "x")
    assert (cfg.data.store, cfg.distill.lr, cfg.scale.workers, cfg.progress.log_to) == (store, 0.5, 3, "csv")
    flat = cfg.to_dict()
    assert len(flat) == 53 and flat["lr"] == 0.5 and not {"data", "distill", "training"} & set(flat)
    assert TrainConfig.from_flags(**flat) == cfg and cfg.with_flags(lr=0.1).distill.lr == 0.1
    with pytest.raises(TypeError, match="no flag distill_lr"):
        TrainConfig.from_flags(distill_lr=0.1)
    # A sweep holds a run's config: the run's flags are the sweep's but --output and --overwrite, its own.
    sweep = parse_config(SweepConfig, ["--output", out, "--lr", "0.5", "--students-per-run", "2"], "x")
    assert (sweep.output, sweep.train.output, sweep.train.distill.lr, sweep.search.students_per_run) == (
        out,
        "",
        0.5,
        2,
    )
    assert set(sweep.to_dict()) - set(flat) == {"space", "num_samples", "metric", "mode", "max_concurrent"} | {
        "students_per_run",
        "max_retries",
        "search_seed",
    }


def test_a_resume_may_change_only_what_does_not_change_the_results(tmp_path):
    from trainer.student.run import _prepare_output

    cfg = TrainConfig.from_flags(store=str(tmp_path / "s"), student="digits-mlp", output=str(tmp_path / "run"))
    assert set(cfg.to_dict()) - set(cfg.identity()) == RESUME_FREE
    _prepare_output(cfg, cfg)
    (tmp_path / "run" / "ray").mkdir()  # an unfinished run: its driver died
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    del saved["shuffle_window"]  # as an older version wrote it: a key it did not write had its default
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    changed = cfg.with_flags(loss_chunk=64, log_to="csv", eval_batch_size=8, max_failures=0, verbose=True)
    _prepare_output(changed, changed)  # the same run, resumed
    other = cfg.with_flags(lr=0.5, shuffle_window=4, log_every=1)
    with pytest.raises(DataError, match=r"differ in: lr, shuffle_window\)"):
        _prepare_output(other, other)


def test_a_runs_first_shard_is_read_when_first_needed_and_once(digits_stores):
    from trainer.student.stores import RunStores, check_inputs

    cfg = TrainConfig.from_flags(store=digits_stores["train"], dataset="digits", student="digits-mlp")
    stores = RunStores.open(Data(store=digits_stores["train"]))
    check_inputs(cfg, stores)  # rows from the dataset, a student as wide as the store: no shard read
    assert "first_shard" not in vars(stores)
    first = stores.first_shard
    assert stores.first_shard is first and first.num_samples == 500


@pytest.mark.parametrize(
    "store, expected",
    [
        ("v1-digits-zarr", 4.0),  # classification
        ("v4-views-zarr", 4.0),  # classification, two augmented views per sample
        ("v1-tokens-zarr", 1.0),  # token positions, a store without its inputs
        ("v5-chat-delta-logq8-zarr", 1.0),  # chat, with its inputs
    ],
)
def test_without_temperature_a_token_store_trains_at_1_and_a_classification_store_at_4(store, expected, tmp_path):
    from logitstore.manifest import read_manifest
    from trainer.student.config import store_temperature

    golden = GOLDEN / store
    manifest = read_manifest(str(golden))
    assert store_temperature(manifest) == expected
    cfg = TrainConfig.from_flags(store=str(golden), student="digits-mlp", output=str(tmp_path / "r"), dataset="digits")
    cfg = cfg.with_flags(variants='[{"lr": 0.1}, {"temperature": 2}, {"temperature": 0}]')
    resolved = cfg.with_store_temperature(manifest)
    assert [s.temperature for s in resolved.students()] == [expected, 2.0, expected]
    assert resolved.to_dict()["temperature"] == expected  # what config.json records
    assert cfg.with_flags(temperature=4.0).with_store_temperature(manifest).distill.temperature == 4.0


def test_a_default_temperature_the_store_did_not_record_is_named_with_the_fix(tmp_path):
    from dataclasses import replace

    from logitstore.manifest import read_manifest

    manifest = read_manifest(str(GOLDEN / "v5-chat-delta-logq8-zarr"))
    hot = replace(manifest, layout=replace(manifest.layout, temperatures=(2.0, 4.0)))
    cfg = TrainConfig.from_flags(store="s", student="digits-mlp", output=str(tmp_path / "r"))
    problems = cfg.distill.problems(hot)
    assert problems == [
        "the default temperature of this store (1) was not recorded in the store (recorded: 2, 4): pass "
        "--temperature with one of those, or dump again with it in --temperatures"
    ]
    assert cfg.distill.problems(manifest) == [] and cfg.with_flags(temperature=-1.0).distill.problems(manifest)


def test_a_config_built_in_python_makes_local_paths_absolute_as_the_cli_does(tmp_path, monkeypatch):
    """Ray's workers run in a directory of their own: a relative hf: student given to
    TrainConfig.from_flags (as a bench or notebook builds a run) was not found there."""
    (tmp_path / "models" / "student").mkdir(parents=True)
    (tmp_path / "stores" / "s").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    flags = dict(store="stores/s", student="hf:models/student", output="runs/r", eval_dataset="missing.jsonl")
    cfg = TrainConfig.from_flags(**flags)
    assert cfg.data.store == str(tmp_path / "stores" / "s") and cfg.output == str(tmp_path / "runs" / "r")
    assert cfg.distill.student == f"hf:{tmp_path / 'models' / 'student'}"
    assert cfg.data.eval_dataset == "missing.jsonl"  # left as typed: validation names it
    assert cfg == parse_config(TrainConfig, [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()], "t")
