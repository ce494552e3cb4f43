"""--help of every job: every flag, every accepted form of each spec, the choices and the required
flags; and it loads neither torch nor Ray (nor does validating a config)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBS = ("dump_logits", "train_student", "sweep", "inspect_store", "verify_store", "make_student")

FLAGS = {
    "dump_logits": "--teacher --dataset --out --top-k --temperatures --format --batch-size --workers --shard-size "
    "--overwrite --precision --selection --draws --tokenizer --seq-len --views --augment --config "
    "--threads-per-worker --index-codec --value-codec",
    "train_student": "--store --dataset --eval-dataset --eval-store --student --epochs --batch-size --lr --temperature "
    "--alpha --workers --seed --output --checkpoint-every-steps --max-failures --loss --jsd-beta --variants --augment "
    "--config --shuffle-window",
    "sweep": "--space --num-samples --metric --mode --max-concurrent --students-per-run --max-retries --search-seed "
    "--store --epochs --config",
    "inspect_store": "--out --max-positions",
    "verify_store": "",
    "make_student": "--teacher --out --depth --keep-layers --calibration --calibration-rows --seq-len --overwrite",
}

# Every job's --help in one fresh interpreter, then what that loaded.
HELP_ALL = """
import contextlib, io, json, runpy, sys
helps = {}
for job in sys.argv[1:]:
    sys.argv = [job, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        runpy.run_module(f"jobs.{job}", run_name="__main__")
    helps[job] = " ".join(out.getvalue().split())
loaded = [m for m in ("torch", "ray", "matplotlib", "transformers") if m in sys.modules]
print(json.dumps({"helps": helps, "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def helps() -> dict:
    out = subprocess.run([sys.executable, "-c", HELP_ALL, *JOBS], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_help_lists_every_flag_and_loads_no_torch_nor_ray(helps):
    assert helps["loaded"] == []
    for job in JOBS:
        missing = [flag for flag in FLAGS[job].split() if flag not in helps["helps"][job]]
        assert missing == [], job


def test_help_lists_every_form_of_each_spec_the_choices_and_the_required_flags(helps):
    dump, train = helps["helps"]["dump_logits"], helps["helps"]["train_student"]
    forms = "digits-cnn stdlib-gpt-bpe8192 hf:<dir> package.module:function Parquet digits-eval stdlib-small-eval "
    forms += "digits-shift-rotate bpe:N tokenizer.json {zarr,arrow} {plain,delta} {float32,logq} {topk,sample,hybrid} "
    forms += "{auto,fp32,bf16,fp16}"
    assert [form for form in forms.split() if form not in dump] == []
    forms = "digits-mlp-wide stdlib-gpt-student stdlib-gpt-bpe32k-student hf:<dir> package.module:function "
    forms += "{kl,reverse-kl,jsd}"
    assert [form for form in forms.split() if form not in train] == []
    for text, flags in (
        (dump, ("--teacher", "--dataset", "--out")),
        (train, ("--store", "--dataset", "--student", "--output")),
    ):
        required = text.split("required (on the command line or in --config):")[1].split("options:")[0]
        assert all(flag in required for flag in flags) and "--top-k" not in required and "--epochs" not in required


def test_validating_a_config_loads_no_torch_nor_ray(digits_stores, tmp_path):
    code = (
        "import sys\nfrom trainer.student.config import TrainConfig\nfrom trainer.teacher.config import DumpConfig\n"
        f"train = TrainConfig.from_flags(store={digits_stores['train']!r}, dataset='digits', student='digits-mlp', "
        f"output={str(tmp_path / 'r')!r})\n"
        f"assert train.validate() == []\n"
        f"assert DumpConfig(teacher='digits-cnn', dataset='digits', out={str(tmp_path / 's')!r}).validate() == []\n"
        "print([m for m in ('torch', 'ray') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
