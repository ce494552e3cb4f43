"""Failures during a dump: killed teacher actors, crashes and resumes, concurrent writers, reruns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run, same_content, tree_digest

from jobs import dump_logits
from logitstore import StoreReader
from logitstore.storage import open_storage
from logitstore.writer import PENDING_NAME

REPO = Path(__file__).resolve().parents[2]

# Small shards, one teacher batch per shard: many shards to lose, resume and compare.
SETTINGS = dict(dataset="digits", top_k=5, shard_size=60, batch_size=64)


@pytest.fixture(scope="module")
def reference(dump):
    return dump(teacher="digits-cnn", **SETTINGS)


@pytest.fixture(scope="module")
def faulty(user_modules, tmp_path_factory):
    """faulty_teachers:killer / :failer — the digits teacher, except that the 3rd forward call of
    a replica SIGKILLs its process (killer) or raises (failer) while the flag file is absent."""
    flags = tmp_path_factory.mktemp("flags")
    user_modules(
        "faulty_teachers",
        f"""
        import os, signal
        from pathlib import Path
        import torch
        from trainer.builtin import digits

        class Faulty(torch.nn.Module):
            def __init__(self, mode):
                super().__init__()
                self.inner = digits.DigitsCNN()
                self.mode, self.calls = mode, 0
            def forward(self, x):
                self.calls += 1
                flag = Path({str(flags)!r}) / self.mode
                if self.calls == 3 and not flag.exists():
                    flag.write_text("tripped")
                    if self.mode == "killer":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError("injected teacher failure")
                return self.inner(x)

        def _make(mode):
            model = Faulty(mode)
            model.inner.load_state_dict(digits.load_teacher().state_dict())
            return model

        def killer():
            return _make("killer")

        def failer():
            return _make("failer")
    """,
    )
    return flags


# CI: test_a_crashed_dump_resumes_and_equals_an_uninterrupted_one (a dump's failure, resumed exactly)
# and tests/jobs/test_bad_input.py::test_an_error_in_a_dump_actor_is_raised_once_and_is_one_line
@pytest.mark.battery
def test_a_killed_teacher_actor_is_replaced_and_the_store_is_exact(reference, faulty, tmp_path):
    # A job of its own (its own local Ray): the replaced actor may outlive the dataset in a shared
    # session and hold a CPU that later tests need; a CLI job's cluster ends with it.
    out = tmp_path / "store"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.dump_logits",
            "--teacher",
            "faulty_teachers:killer",
            "--out",
            str(out),
            "--dataset",
            "digits",
            "--top-k",
            "5",
            "--shard-size",
            "60",
            "--batch-size",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (faulty / "killer").exists()  # the actor really died mid-dump
    assert same_content(reference, out) and StoreReader(out).verify() == []


def test_a_crashed_dump_resumes_and_equals_an_uninterrupted_one(ray_session, reference, faulty, tmp_path, capsys):
    out = tmp_path / "store"
    args = [
        "--teacher",
        "faulty_teachers:failer",
        "--dataset",
        "digits",
        "--out",
        str(out),
        "--top-k",
        "5",
        "--shard-size",
        "60",
        "--batch-size",
        "64",
    ]
    # The failing run in a job of its own (see above); the rest in this session.
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.dump_logits", *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert proc.returncode != 0 and "injected teacher failure" in proc.stderr
    assert (out / PENDING_NAME).exists() and not (out / "manifest.json").exists()
    written = len(list((out / "shards").iterdir()))
    assert 0 < written < 24

    # Other arguments against the unfinished store: refused, nothing touched.
    before = tree_digest(out)
    code, errors = run(dump_logits.main, args[:-4] + ["--shard-size", "50", "--batch-size", "64"], capsys)
    assert (
        code == 2
        and len(errors) == 1
        and "unfinished dump made with other arguments" in errors[0]
        and "config.shard_size" in errors[0]
    )
    assert tree_digest(out) == before

    # The same command again: resumes, keeps the finished shards, ends equal to the uninterrupted store.
    assert dump_logits.main(args) == 0
    assert f"resumed: {written} of 24 shards were already complete" in capsys.readouterr().out
    assert same_content(reference, out) and not (out / PENDING_NAME).exists()

    # And once more: the complete store is recognised, nothing is rewritten.
    before = tree_digest(out)
    assert dump_logits.main(args) == 0
    assert "already holds this exact dump" in capsys.readouterr().err and tree_digest(out) == before


def test_a_second_writer_is_refused_and_a_dead_holders_lock_is_not(ray_session, tmp_path, capsys):
    out = tmp_path / "store"
    with open_storage(out).exclusive():
        code, errors = run(
            dump_logits.main, ["--teacher", "digits-cnn", "--dataset", "digits-eval", "--out", str(out)], capsys
        )
        assert code == 2 and len(errors) == 1 and f"another writer (pid {os.getpid()}" in errors[0]
        assert "wait for it to finish, or choose another --out" in errors[0]
    # A holder killed with SIGKILL: its lock goes with it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from logitstore.storage import open_storage; "
            f"open_storage({str(out)!r}).exclusive().__enter__(); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="another writer"):
        open_storage(out).exclusive().__enter__()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with open_storage(out).exclusive():
        pass


def test_a_refused_dump_leaves_no_directory(ray_session, tmp_path, capsys):
    code, errors = run(
        dump_logits.main,
        ["--teacher", "digits-cnn", "--dataset", "digits-eval", "--out", str(tmp_path / "st"), "--top-k", "11"],
        capsys,
    )
    assert code == 2 and not (tmp_path / "st").exists()


@pytest.mark.slow
@pytest.mark.battery  # CI: test_a_crashed_dump_resumes_and_equals_an_uninterrupted_one
def test_kill_resume_script_short_form(tmp_path):
    """The chaos script of issue 4, one kill -9 of the whole local cluster (CI's short form)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.kill_resume",
            "--kills",
            "1",
            "--seed",
            "3",
            "--teacher",
            "digits-cnn",
            "--dataset",
            "digits",
            "--shard-size",
            "60",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "1 kills, 1 final stores equal to the uninterrupted one, 0 not" in proc.stdout


@pytest.mark.parametrize("backend", ["zarr", "arrow"])
def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_shard(tmp_path, backend):
    """The file-size limit (RLIMIT_FSIZE) makes writes fail with EFBIG, as a full disk fails with ENOSPC."""
    code = f"""
import resource, signal
import numpy as np
from logitstore import ShardData, StoreError, StoreLayout, StoreWriter, plan_shards
n = 20000
rng = np.random.default_rng(0)
data = ShardData(sample_id=np.arange(n, dtype=np.int64), position_offsets=np.arange(n + 1, dtype=np.int64),
                 topk_index=rng.integers(0, 60000, size=(n, 8)).astype(np.uint16),
                 topk_logit=-np.sort(-rng.normal(size=(n, 8)).astype(np.float32), axis=1),
                 logsumexp=np.full((n, 3), 5.0, dtype=np.float32))
layout = StoreLayout(backend={backend!r}, top_k=8, vocab_size=60000, temperatures=(1.0, 2.0, 4.0), shard_size=n)
with StoreWriter({str(tmp_path / "st")!r}) as writer:
    writer.start(layout, plan_shards(data.sample_id, n), {{}}, overwrite=False)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    try:
        writer.shard_writer().write(0, data)
    except StoreError as exc:
        print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip()
    assert out.startswith(f"no space left to write shard shards/00000.{backend}") and "rerun the same command" in out
    assert list((tmp_path / "st" / "shards").iterdir()) == [] and list((tmp_path / "st" / ".tmp").iterdir()) == []
