"""--strategy fsdp on 2 CPU workers (gloo): an HF student sharded with FSDP2 whose worker is killed
mid-run resumes from its sharded checkpoint, ends where an undisturbed DDP run of the same
student ends (battery: step by step), and leaves an export plain transformers loads."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from jobs import train_student
from tests.helpers import tiny_chat_tokenizer, tiny_llama, write_jsonl
from tests.student.test_hf_student import PLAIN_LOOP, ROWS

pytestmark = pytest.mark.slow

ARGS = ("--epochs", "2", "--batch-size", "2", "--lr", "0.01", "--temperature", "1", "--workers", "2")
ARGS += ("--log-every", "1", "--seed", "3")


@pytest.fixture(scope="module")
def lm(dump, user_modules, tmp_path_factory):
    """A chat store of a tiny Llama teacher, and `fsdp_students:student(kill_at, flag)`: a smaller
    untied Llama of the same family that SIGKILLs its process at its `kill_at`-th training forward
    (once: `flag` records it)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    tok = tiny_chat_tokenizer(tmp / "teacher")
    tiny_llama(tmp / "teacher", len(tok), max_positions=128, init_std=0.2)
    config = json.loads((tmp / "teacher" / "config.json").read_text())
    config.update(hidden_size=8, intermediate_size=16, num_hidden_layers=2, tie_word_embeddings=False)
    (tmp / "student.json").write_text(json.dumps(config))
    store = dump(teacher=f"hf:{tmp / 'teacher'}", dataset=write_jsonl(tmp / "chat.jsonl", ROWS), top_k=8, seq_len=64)
    user_modules(
        "fsdp_students",
        f"""
        import os, signal
        from pathlib import Path
        from trainer.inputs.models import HFCausalLM

        class Suicidal(HFCausalLM):
            def __init__(self, kill_at, flag):
                super().__init__({str(tmp / "student.json")!r}, pretrained=False)
                self.calls, self.kill_at, self.flag = 0, kill_at, Path(flag)
            def forward(self, input_ids, hidden=False):
                if self.training:
                    self.calls += 1
                    if self.calls == self.kill_at and not self.flag.exists():
                        self.flag.write_text("killed")
                        os.kill(os.getpid(), signal.SIGKILL)
                return super().forward(input_ids, hidden=hidden)

        def calm():
            return Suicidal(0, "/nonexistent")

        def killed():
            return Suicidal(7, {str(tmp / "killed")!r})
        """,
    )
    return tmp, store


def _run(store, out, student, *extra) -> dict:
    argv = ["--store", store, "--eval-store", store, "--student", student, "--output", str(out), *ARGS, *extra]
    assert train_student.main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def _steps(run) -> dict[int, float]:
    return {int(r["step"]): float(r["loss"]) for r in csv.DictReader((run / "logs" / "steps.csv").open())}


def test_a_killed_fsdp_worker_resumes_from_its_shards_and_the_export_loads(lm, tmp_path):
    tmp, store = lm
    # 18 samples, batches of 2 over 2 workers: 4 steps per epoch; killed at its 7th training
    # forward (step 3 of epoch 2), after the checkpoints of steps 2 and 4 and of the end of epoch 1.
    out = tmp_path / "fsdp"
    killed = _run(store, out, "fsdp_students:killed", "--strategy", "fsdp", "--checkpoint-every-steps", "2")
    assert (tmp / "killed").exists()
    resumed = [e["resumed_from"] for e in killed["epochs"] if "resumed_from" in e]
    assert len(resumed) == 1 and [e["epoch"] for e in killed["epochs"]] == [1, 2]
    shards = sorted(p.name for p in (out / "checkpoint").glob("shard-*"))
    assert shards == ["shard-0-of-2.pt", "shard-1-of-2.pt"] and (out / "checkpoint" / "model.pt").is_file()
    # Each rank held half of every weight (dim 0 split in two), and the whole is the exported one.
    whole = torch.load(out / "checkpoint" / "model.pt", weights_only=True)
    halves = [torch.load(out / "checkpoint" / name, weights_only=True)[0]["model"] for name in shards]
    assert set(halves[0]) == set(whole)
    for name, value in whole.items():
        assert halves[0][name].shape[0] == -(-value.shape[0] // 2)
        assert torch.equal(torch.cat([halves[0][name], halves[1][name]]), value)

    exported = out / "student"
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_LOOP, str(exported), store], capture_output=True, text=True, check=True
    )
    got = json.loads(plain.stdout.strip().splitlines()[-1])
    assert got["perplexity"] == pytest.approx(killed["eval_perplexity"], rel=1e-3)


@pytest.mark.battery  # CI: test_a_killed_fsdp_worker_resumes_from_its_shards_and_the_export_loads
def test_fsdp_follows_ddp_step_by_step_through_a_kill(lm, tmp_path):
    """The same student, data and seed: DDP undisturbed vs FSDP killed once and resumed from its
    shards. Tolerance: 1e-4 relative per step loss (the reductions differ: all-reduce vs
    reduce-scatter, in another order)."""
    tmp, store = lm
    (tmp / "killed").unlink(missing_ok=True)
    ddp = _run(store, tmp_path / "ddp", "fsdp_students:calm")
    fsdp = _run(store, tmp_path / "fsdp", "fsdp_students:killed", "--strategy", "fsdp", "--checkpoint-every-steps", "2")
    assert (tmp / "killed").exists() and any("resumed_from" in e for e in fsdp["epochs"])
    a, b = _steps(tmp_path / "ddp"), _steps(tmp_path / "fsdp")
    assert sorted(a) == sorted(b) == list(range(1, 9))  # 18 samples: 4 batches of 2 per worker, 2 epochs
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    assert fsdp["eval_perplexity"] == pytest.approx(ddp["eval_perplexity"], rel=1e-4)
