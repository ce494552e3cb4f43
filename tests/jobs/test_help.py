"""--help of every job: every flag, every accepted form of each spec, the choices and the required
flags; and it loads neither torch nor Ray (nor does validating a config)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBS = ("dump_logits", "train_student", "sweep", "inspect_store", "verify_store")

FLAGS = {
    "dump_logits": (
        "--teacher",
        "--dataset",
        "--out",
        "--top-k",
        "--temperatures",
        "--format",
        "--batch-size",
        "--workers",
        "--shard-size",
        "--overwrite",
        "--precision",
        "--selection",
        "--draws",
        "--tokenizer",
        "--seq-len",
        "--views",
        "--augment",
        "--config",
        "--threads-per-worker",
        "--index-codec",
        "--value-codec",
    ),
    "train_student": (
        "--store",
        "--dataset",
        "--eval-dataset",
        "--eval-store",
        "--student",
        "--epochs",
        "--batch-size",
        "--lr",
        "--temperature",
        "--alpha",
        "--workers",
        "--seed",
        "--output",
        "--checkpoint-every-steps",
        "--max-failures",
        "--loss",
        "--jsd-beta",
        "--variants",
        "--augment",
        "--config",
        "--shuffle-window",
    ),
    "sweep": (
        "--space",
        "--num-samples",
        "--metric",
        "--mode",
        "--max-concurrent",
        "--students-per-run",
        "--max-retries",
        "--search-seed",
        "--store",
        "--epochs",
        "--config",
    ),
    "inspect_store": ("--out", "--max-positions"),
    "verify_store": (),
}


def help_text(job: str) -> tuple[str, list[str]]:
    """The job's --help output, and the heavy packages loaded to print it."""
    code = (
        f"import sys, runpy; sys.argv = ['{job}', '--help']\n"
        f"try:\n    runpy.run_module('jobs.{job}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('LOADED', [m for m in ('torch', 'ray', 'matplotlib', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO).stdout
    text, loaded = out.rsplit("LOADED", 1)
    return " ".join(text.split()), json.loads(loaded.strip().replace("'", '"'))


@pytest.mark.parametrize("job", JOBS)
def test_help_lists_every_flag_and_loads_no_torch_nor_ray(job):
    text, loaded = help_text(job)
    assert loaded == []
    for flag in FLAGS[job]:
        assert flag in text, flag


def test_help_lists_every_form_of_each_spec_the_choices_and_the_required_flags():
    dump, _ = help_text("dump_logits")
    for form in (
        "digits-cnn",
        "stdlib-gpt-bpe8192",
        "hf:<dir>",
        "package.module:function",
        "Parquet",
        "digits-eval",
        "stdlib-small-eval",
        "digits-shift-rotate",
        "bpe:N",
        "tokenizer.json",
        "{zarr,arrow}",
        "{plain,delta}",
        "{float32,logq}",
        "{topk,sample,hybrid}",
        "{auto,fp32,bf16,fp16}",
    ):
        assert form in dump, form
    required = dump.split("required (on the command line or in --config):")[1].split("options:")[0]
    assert all(flag in required for flag in ("--teacher", "--dataset", "--out")) and "--top-k" not in required
    train, _ = help_text("train_student")
    for form in (
        "digits-mlp-wide",
        "stdlib-gpt-student",
        "stdlib-gpt-bpe32k-student",
        "hf:<dir>",
        "package.module:function",
        "{kl,reverse-kl,jsd}",
    ):
        assert form in train, form
    required = train.split("required (on the command line or in --config):")[1].split("options:")[0]
    assert all(flag in required for flag in ("--store", "--dataset", "--student", "--output"))


def test_validating_a_config_loads_no_torch_nor_ray(digits_stores, tmp_path):
    code = (
        "import sys\nfrom trainer.student.config import TrainConfig\nfrom trainer.teacher.config import DumpConfig\n"
        f"assert TrainConfig(store={digits_stores['train']!r}, dataset='digits', student='digits-mlp', "
        f"output={str(tmp_path / 'r')!r}).validate() == []\n"
        f"assert DumpConfig(teacher='digits-cnn', dataset='digits', out={str(tmp_path / 's')!r}).validate() == []\n"
        "print([m for m in ('torch', 'ray') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
