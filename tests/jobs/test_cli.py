"""--config files: YAML or TOML, checked against the job's flags, overridden by the command line."""

from __future__ import annotations

import pytest

from jobs.cli import parse_config, run_job
from trainer.errors import ConfigError
from trainer.student.config import TrainConfig
from trainer.teacher.config import DumpConfig


def test_a_toml_or_yaml_file_sets_flags_and_the_command_line_overrides_it(tmp_path):
    (tmp_path / "d.toml").write_text('teacher = "digits-cnn"\ntop-k = 7\ntemperatures = [1, 3]\noverwrite = true\n')
    cfg = parse_config(DumpConfig, ["--config", str(tmp_path / "d.toml"), "--top-k", "9", "--dataset", "digits"], "x")
    assert (cfg.teacher, cfg.top_k, cfg.temperatures, cfg.overwrite, cfg.dataset) == (
        "digits-cnn",
        9,
        (1.0, 3.0),
        True,
        "digits",
    )
    (tmp_path / "t.yaml").write_text("lr: 3e-3\nalpha: 1\nvariants:\n  - {lr: 1e-2}\n  - {temperature: 2}\n")
    cfg = parse_config(TrainConfig, ["--config", str(tmp_path / "t.yaml")], "x")
    assert cfg.distill.lr == 0.003 and cfg.distill.alpha == 1.0 and isinstance(cfg.distill.alpha, float)
    # temperature 0: the store's default, made a number when the run opens its store
    assert [s.lr for s in cfg.students()] == [0.01, 0.003] and [s.temperature for s in cfg.students()] == [0.0, 2.0]


def test_every_problem_of_a_config_file_is_reported_at_once(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("top_k: seven\nbogus: 1\noverwrite: 1\n")
    with pytest.raises(ConfigError) as info:
        parse_config(DumpConfig, ["--config", str(tmp_path / "bad.yaml")], "x")
    assert len(info.value.problems) == 3
    (tmp_path / "broken.toml").write_text("top_k = [\n")
    assert run_job(DumpConfig, lambda c: None, ["--config", str(tmp_path / "broken.toml")], "x") == 2
    assert "is not valid TOML" in capsys.readouterr().err
    assert run_job(DumpConfig, lambda c: None, ["--config", str(tmp_path / "c.json")], "x") == 2
    assert "no such file" in capsys.readouterr().err


def test_verbose_is_no_part_of_a_dumps_identity():
    """--verbose changes what a dump prints, not its store: a rerun with or without it resumes the same dump."""
    from trainer.teacher.config import DumpConfig

    quiet = DumpConfig(teacher="digits-cnn", dataset="digits", out="st")
    assert quiet.content() == DumpConfig(teacher="digits-cnn", dataset="digits", out="st", verbose=True).content()


def test_an_adaptive_dump_is_identified_by_its_cap_however_it_was_given():
    """--top-k 5 --max-k 8 and --top-k 8 write the same adaptive store: a rerun given either resumes it."""
    from trainer.teacher.config import DumpConfig

    base = dict(teacher="digits-cnn", dataset="digits", out="st", top_p=0.9)
    a = DumpConfig(**base, top_k=5, max_k=8).content()
    b = DumpConfig(**base, top_k=8).content()
    assert a == b and a["top_k"] == 8 and "max_k" not in a
    assert "top_p" not in DumpConfig(teacher="digits-cnn", dataset="digits", out="st").content()  # as before v6
