"""The training run's configuration in sections: flags flat on the command line, in config files and
in a run's config.json; what a resume may change; a sweep's config holding a run's; and the
stores of a run, whose first shard is read once."""

from __future__ import annotations

import json

import pytest

from jobs.cli import parse_config
from trainer.errors import DataError
from trainer.student.config import Data, TrainConfig
from trainer.student.sweep import SweepConfig

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
    assert len(flat) == 42 and flat["lr"] == 0.5 and not {"data", "distill", "training"} & set(flat)
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
