"""Bad input as a new user would give it: one line naming the problem, exit code 2, nothing damaged."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import run, tiny_llama, token_parquet, tree_digest

from jobs import dump_logits, train_student


@pytest.fixture(scope="module")
def stores(digits_stores):
    return digits_stores


@pytest.fixture(scope="module")
def user_models(user_modules):
    user_modules(
        "bad_models",
        """
        import torch
        def seven_classes():
            return torch.nn.Linear(64, 7)
        def not_a_model():
            return "hello"
        def tiny_lm():
            from trainer.builtin.stdlib.gpt import GPT, GPTConfig
            return GPT(GPTConfig(vocab_size=256, seq_len=16, width=16, depth=1, heads=2))
        def nan_teacher():
            class Nan(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.lin = torch.nn.Linear(64, 10)
                def forward(self, x):
                    return self.lin(x) * float("nan")
            return Nan()
    """,
    )


def train_args(stores, tmp_path, **override):
    args = {
        "--store": stores["train"],
        "--dataset": "digits",
        "--student": "digits-mlp",
        "--output": str(tmp_path / "run"),
        "--epochs": "1",
    }
    args.update(override)
    return [x for k, v in args.items() for x in (k, v)]


def test_missing_dataset_path(tmp_path, capsys):
    code, errors = run(
        dump_logits.main,
        ["--teacher", "digits-cnn", "--dataset", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "st")],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "does not exist" in errors[0]
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize(
    "flag, value, needle",
    [
        ("--dataset", "nope.jsonl", "'nope.jsonl' does not exist"),
        ("--dataset", "digit", "(did you mean digits?)"),
        ("--teacher", "digits-cnm", "is not a built-in model (did you mean digits-cnn?)"),
        ("--augment", "rot13", "is not a built-in augmentation"),
    ],
)
def test_an_unknown_spec_is_one_short_line_that_points_to_help(tmp_path, capsys, monkeypatch, flag, value, needle):
    """Not every form a spec may take (--help lists them): the problem, and where to look."""
    monkeypatch.chdir(tmp_path)
    args = {"--teacher": "digits-cnn", "--dataset": "digits", "--out": "st", flag: value}
    if flag == "--augment":
        args["--views"] = "2"
    code, errors = run(dump_logits.main, [x for k, v in args.items() for x in (k, v)], capsys)
    assert code == 2 and len(errors) == 1 and needle in errors[0] and "--help" in errors[0], errors
    assert len(errors[0]) < 250, errors[0]


def _tracebacks(err: str) -> list[str]:
    """The lines of `err` that start a traceback, but Ray Train's PlacementGroupCleaner's: its monitor
    thread dies with one whenever several Ray clusters run on the machine (it looks its cluster up
    among them), in any run, finished or failed."""
    return [line for line in err.splitlines() if "Traceback" in line and "PlacementGroupCleaner" not in line]


@pytest.mark.parametrize(
    "damage",
    ["flipped byte", pytest.param("missing shard", marks=pytest.mark.battery)],  # CI: the flipped byte
)
def test_a_damaged_shard_found_during_training_ends_the_run_at_once_with_one_line(stores, tmp_path, capfd, damage):
    """Validation reads the manifest and shard 0: a later shard's damage is found by a join task of
    Ray Data inside a training worker. Raised again by any retry, it ends the run at once (Ray
    Train restarted the workers --max-failures times, each finding it again, then a traceback)."""
    import shutil
    import time

    store = tmp_path / "store"
    shutil.copytree(stores["train"], store)
    last = store / "shards" / "00002.zarr"
    if damage == "flipped byte":
        chunk = next(f for f in sorted((last / "topk_logit").rglob("*")) if f.is_file() and f.name != "zarr.json")
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    else:
        shutil.rmtree(last)
    start = time.monotonic()
    code = train_student.main(train_args(stores, tmp_path, **{"--store": str(store)}))
    seconds = time.monotonic() - start
    err = capfd.readouterr().err  # (the file descriptor: Ray's log handlers keep the stderr they started with)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "shard shards/00002.zarr of store" in errors[0], err[-3000:]
    assert ("fails its checksum" if damage == "flipped byte" else "is missing") in errors[0]
    assert _tracebacks(err) == [] and seconds < 60, (seconds, err[-3000:])


def test_a_bug_in_a_training_worker_is_one_traceback_and_is_not_retried(stores, tmp_path, capfd, buggy_student):
    """Any exception that Python code raises in a worker would be raised again: not retried either.
    A bug (not one of our errors) is its traceback, the worker's, printed once; exit code 1."""
    student, raised = buggy_student
    code = train_student.main(train_args(stores, tmp_path, **{"--student": student}))
    err = capfd.readouterr().err
    assert code == 1 and raised.read_text() == "raised\n", err[-3000:]  # one worker, once
    assert len(_tracebacks(err)) == 1 and "IndexError: tuple index out of range" in err, err[-3000:]
    assert "training worker 0 failed (not retried" in err and "return ()[0]" in err


def test_all_problems_are_reported_at_once(tmp_path, capsys):
    code, errors = run(
        dump_logits.main,
        [
            "--teacher",
            "nosuch",
            "--dataset",
            "digits",
            "--out",
            str(tmp_path / "st"),
            "--top-k",
            "0",
            "--temperatures",
            "1,-2",
            "--format",
            "hdf5",
        ],
        capsys,
    )
    assert code == 2 and len(errors) == 4
    joined = "\n".join(errors)
    for needle in ("--teacher 'nosuch'", "--top-k must be >= 1", "--temperatures", "--format must be zarr or arrow"):
        assert needle in joined


def test_bad_codec_flags(tmp_path, capsys):
    code, errors = run(
        dump_logits.main,
        [
            "--teacher",
            "digits-cnn",
            "--dataset",
            "digits",
            "--out",
            str(tmp_path / "st"),
            "--index-codec",
            "huffman",
            "--value-codec",
            "logq",
            "--value-bits",
            "20",
            "--threads-per-worker",
            "-1",
        ],
        capsys,
    )
    assert code == 2 and len(errors) == 3
    joined = "\n".join(errors)
    for needle in (
        "--index-codec must be plain or delta",
        "--value-bits must be in 1..16",
        "--threads-per-worker must be >= 1",
    ):
        assert needle in joined
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--top-p", "0"], "--top-p must lie in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must lie in (0, 1]"),
        (["--top-p", "nan"], "--top-p must lie in (0, 1]"),
        (["--top-p", "0.9", "--min-k", "8", "--max-k", "4"], "--min-k 8 exceeds --max-k 4"),
        (["--top-p", "0.9", "--min-k", "6"], "--min-k 6 exceeds --max-k (default: --top-k) 5"),
        (["--max-k", "9"], "--max-k applies with --top-p P < 1 only"),
        (["--top-p", "0.9", "--selection", "hybrid"], "--top-p applies to --selection topk only"),
    ],
)
def test_adaptive_k_flags(tmp_path, capsys, flags, needle):
    args = ["--teacher", "digits-cnn", "--dataset", "digits", "--out", str(tmp_path / "st"), *flags]
    code, errors = run(dump_logits.main, args, capsys)
    assert code == 2 and len(errors) == 1 and needle in errors[0], errors
    assert not (tmp_path / "st").exists()


def test_existing_store_is_not_overwritten(stores, capsys):
    before = tree_digest(stores["eval"])
    code, errors = run(
        dump_logits.main, ["--teacher", "digits-cnn", "--dataset", "digits-eval", "--out", stores["eval"]], capsys
    )
    assert code == 2 and len(errors) == 1 and "--overwrite" in errors[0]
    assert tree_digest(stores["eval"]) == before


def test_out_is_a_non_empty_directory_that_is_not_a_store(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    code, errors = run(
        dump_logits.main,
        ["--teacher", "digits-cnn", "--dataset", "digits-eval", "--out", str(tmp_path / "mine")],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "not a store" in errors[0]
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_k_larger_than_vocabulary(tmp_path, capsys):
    code, errors = run(
        dump_logits.main,
        ["--teacher", "digits-cnn", "--dataset", "digits-eval", "--out", str(tmp_path / "st"), "--top-k", "11"],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "exceeds the teacher's 10 classes" in errors[0]
    assert not (tmp_path / "st" / "manifest.json").exists()


def test_nan_teacher_logits(tmp_path, capsys, user_models):
    code, errors = run(
        dump_logits.main,
        ["--teacher", "bad_models:nan_teacher", "--dataset", "digits-eval", "--out", str(tmp_path / "st")],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "NaN or inf" in errors[0]
    assert not (tmp_path / "st" / "manifest.json").exists()


def test_an_error_in_a_dump_actor_is_raised_once_and_is_one_line(tmp_path, user_modules):
    """Ray Data does not retry an exception raised in its map actors (only Ray's system errors): the
    teacher's NaN, found by the actor scoring it, is one line; Ray Data's own logs of it, with their
    tracebacks (three, one asking to report a bug in Ray), stay in its log files. The real process:
    in this one, Ray Data's log handler writes to the stderr it found at import, not the test's."""
    scored = tmp_path / "scored"
    user_modules(
        "counting_teachers",
        f"""
        import ray, torch

        class Nan(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(64, 10)
            def forward(self, x):
                if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:  # not the driver
                    with open({str(scored)!r}, "a") as f:
                        f.write("scored\\n")
                return self.lin(x) * float("nan")

        def nan_teacher():
            return Nan()
    """,
    )
    argv = ["--teacher", "counting_teachers:nan_teacher", "--dataset", "digits-eval", "--out", str(tmp_path / "st")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # (this session's Ray sets some)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.dump_logits", *argv], capture_output=True, text=True, timeout=300, env=env
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "the teacher produced NaN or inf logits" in errors[0]
    assert scored.read_text() == "scored\n" and _tracebacks(proc.stderr) == [], proc.stderr[-3000:]


def test_teacher_that_is_not_a_module(tmp_path, capsys, user_models):
    code, errors = run(
        dump_logits.main,
        ["--teacher", "bad_models:not_a_model", "--dataset", "digits-eval", "--out", str(tmp_path / "st")],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "not a torch.nn.Module" in errors[0]


def test_store_does_not_match_dataset(stores, tmp_path, capsys):
    before = tree_digest(stores["eval"])
    code, errors = run(train_student.main, train_args(stores, tmp_path, **{"--store": stores["eval"]}), capsys)
    assert code == 2 and len(errors) == 1 and "does not match store" in errors[0]
    assert tree_digest(stores["eval"]) == before
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_temperature_not_recorded(stores, tmp_path, capsys):
    code, errors = run(train_student.main, train_args(stores, tmp_path, **{"--temperature": "3"}), capsys)
    assert code == 2 and len(errors) == 1 and "--temperature 3 was not recorded" in errors[0] and "1, 2, 4" in errors[0]


def test_student_width_differs_from_vocabulary(stores, tmp_path, capsys, user_models):
    code, errors = run(
        train_student.main, train_args(stores, tmp_path, **{"--student": "bad_models:seven_classes"}), capsys
    )
    # The train store (k=5) holds ids up to 9: the first one beyond the 7 outputs is named.
    assert code == 2 and len(errors) == 1 and "beyond what --student bad_models:seven_classes outputs (7" in errors[0]
    assert "stored id" in errors[0] and "use a student with 10 outputs" in errors[0]


def test_missing_and_incomplete_store(stores, tmp_path, capsys):
    code, errors = run(train_student.main, train_args(stores, tmp_path, **{"--store": str(tmp_path / "nope")}), capsys)
    assert code == 2 and len(errors) == 1 and "no store at" in errors[0]
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "shards").mkdir()
    code, errors = run(train_student.main, train_args(stores, tmp_path, **{"--store": str(tmp_path / "half")}), capsys)
    assert code == 2 and len(errors) == 1 and "no complete store" in errors[0]


def test_bad_training_numbers(stores, tmp_path, capsys):
    code, errors = run(
        train_student.main, train_args(stores, tmp_path, **{"--alpha": "1.5", "--epochs": "0", "--lr": "-1"}), capsys
    )
    assert code == 2 and len(errors) == 3


def test_token_row_longer_than_seq_len(tmp_path, capsys, user_models):
    data = token_parquet(tmp_path / "t.parquet", [list(range(10)), list(range(20))])
    code, errors = run(
        dump_logits.main,
        ["--teacher", "bad_models:tiny_lm", "--dataset", data, "--out", str(tmp_path / "st"), "--seq-len", "16"],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "id 1 has 20 tokens, more than --seq-len 16" in errors[0]
    assert not (tmp_path / "st").exists()


def test_token_ids_beyond_the_teachers_vocabulary(tmp_path, capsys, user_models):
    data = token_parquet(tmp_path / "t.parquet", [[1, 2, 3], [4, 300, 5]])
    code, errors = run(
        dump_logits.main,
        ["--teacher", "bad_models:tiny_lm", "--dataset", data, "--out", str(tmp_path / "st"), "--seq-len", "16"],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "token id 300 but the teacher's vocabulary has 256" in errors[0]
    assert not (tmp_path / "st").exists()


def test_samples_longer_than_the_hf_teachers_positions(tmp_path, capsys):
    """Today's HF models fail deep in their forward pass (an IndexError, or silently wrong rotary
    positions): the dump refuses before the teacher runs."""
    teacher = tiny_llama(tmp_path / "llama", 300, max_positions=16)
    data = token_parquet(tmp_path / "t.parquet", [list(range(10)), list(range(20))])
    argv = ["--teacher", teacher, "--dataset", data, "--out", str(tmp_path / "st"), "--seq-len", "32"]
    code, errors = run(dump_logits.main, argv, capsys)
    assert code == 2 and len(errors) == 1
    assert "samples of 20 tokens but the teacher embeds at most 16 positions: use --seq-len 16" in errors[0]
    assert not (tmp_path / "st").exists()


def test_gpus_per_worker_needs_an_hf_teacher_and_a_gpu_cluster(tmp_path, capsys):
    argv = ["--teacher", "digits-cnn", "--dataset", "digits", "--out", str(tmp_path / "st"), "--gpus-per-worker", "2"]
    code, errors = run(dump_logits.main, argv, capsys)
    assert code == 2 and len(errors) == 1 and "spreads an hf:<dir> teacher over several GPUs" in errors[0]
    teacher = tiny_llama(tmp_path / "llama", 300, max_positions=16)
    data = token_parquet(tmp_path / "t.parquet", [list(range(10))])
    argv = ["--teacher", teacher, "--dataset", data, "--out", str(tmp_path / "st"), "--gpus-per-worker", "2"]
    code, errors = run(dump_logits.main, argv, capsys)  # this machine has no GPU
    assert code == 2 and len(errors) == 1
    assert "--gpus-per-worker 2 needs 2 GPUs for one teacher actor but the Ray cluster has 0" in errors[0]
    assert not (tmp_path / "st").exists()


def test_tokenizer_problems_and_hf_dir_without_config(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    code, errors = run(
        dump_logits.main,
        [
            "--teacher",
            f"hf:{tmp_path / 'model'}",
            "--dataset",
            "digits",
            "--out",
            str(tmp_path / "st"),
            "--tokenizer",
            "bpe:lots",
        ],
        capsys,
    )
    joined = "\n".join(errors)
    assert (
        code == 2
        and len(errors) == 3
        and "no config.json" in joined
        and "write bpe:N" in joined
        and "--tokenizer applies to text datasets only" in joined
    )
    code, errors = run(
        dump_logits.main,
        [
            "--teacher",
            "digits-cnn",
            "--dataset",
            "stdlib-small",
            "--out",
            str(tmp_path / "st"),
            "--tokenizer",
            str(tmp_path / "tokenizer.json"),
            "--seq-len",
            "1",
        ],
        capsys,
    )
    assert (
        code == 2
        and len(errors) == 2
        and "neither bytes, bpe:N, an existing tokenizer.json file nor a tokenizer directory" in errors[0]
        and "--seq-len must be >= 2" in errors[1]
    )


def test_a_dataset_file_of_no_known_format_is_refused_before_anything_runs(tmp_path, capsys):
    (tmp_path / "chat.txt").write_text("hello\n")
    code, errors = run(
        dump_logits.main,
        ["--teacher", "digits-cnn", "--dataset", str(tmp_path / "chat.txt"), "--out", str(tmp_path / "st")],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "is a .txt file; datasets are Parquet, JSONL or JSON" in errors[0]
    assert not (tmp_path / "st").exists()


def test_text_without_a_tokenizer_is_refused_before_anything_runs(tmp_path, capsys):
    (tmp_path / "docs.jsonl").write_text('{"text": "hello"}\n')
    code, errors = run(
        dump_logits.main,
        ["--teacher", "digits-cnn", "--dataset", str(tmp_path / "docs.jsonl"), "--out", str(tmp_path / "st")],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "is text: pass --tokenizer" in errors[0]
    assert not (tmp_path / "st").exists()


def test_parquet_without_features_or_tokens(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"words": ["a", "b"]}), tmp_path / "t.parquet")
    code, errors = run(
        dump_logits.main,
        ["--teacher", "digits-cnn", "--dataset", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "st")],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "neither a 'features' column" in errors[0] and "'input_ids'" in errors[0]
    assert not (tmp_path / "st").exists()


def test_empty_dataset(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"features": pa.array([], type=pa.list_(pa.float32()))}), tmp_path / "empty.parquet")
    code, errors = run(
        dump_logits.main,
        ["--teacher", "digits-cnn", "--dataset", str(tmp_path / "empty.parquet"), "--out", str(tmp_path / "st")],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "is empty" in errors[0]
    assert not (tmp_path / "st").exists()


def test_duplicate_ids(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1, 2, 2], "features": [[0.0] * 64] * 3}), tmp_path / "dup.parquet")
    code, errors = run(
        dump_logits.main,
        ["--teacher", "digits-cnn", "--dataset", str(tmp_path / "dup.parquet"), "--out", str(tmp_path / "st")],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and "duplicate ids (e.g. 2)" in errors[0]


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: text.replace('"format_version": 1', '"format_version": 99'), "newer than this logitstore reads"),
        (lambda text: text.replace('"shards/00000.zarr"', '"../../etc/passwd"'), "not a valid shard name"),
        (lambda text: text.replace('"num_samples": 360', '"num_samples": "many"', 1), "has type str"),
    ],
    ids=["truncated-json", "newer-version", "path-traversal", "wrong-type"],
)
def test_damaged_or_hostile_manifest(stores, tmp_path, capsys, damage, needle):
    import shutil

    store = tmp_path / "copy"
    shutil.copytree(stores["eval"], store)
    manifest = store / "manifest.json"
    manifest.write_text(damage(manifest.read_text()))
    before = tree_digest(store)
    args = {"--store": str(store), "--dataset": "digits-eval"}
    code, errors = run(train_student.main, train_args(stores, tmp_path, **args), capsys)
    assert code == 2 and len(errors) == 1 and needle in errors[0], errors
    assert tree_digest(store) == before and not (tmp_path / "run" / "metrics.json").exists()


def test_eval_store_without_eval_dataset(stores, tmp_path, capsys):
    code, errors = run(train_student.main, train_args(stores, tmp_path, **{"--eval-store": stores["eval"]}), capsys)
    assert code == 2 and len(errors) == 1 and "--eval-store needs --eval-dataset" in errors[0]


def test_cli_process_exits_non_zero_with_one_line(tmp_path):
    """The real process: exit status and stderr, not just the function's return value."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train_student",
            "--store",
            str(tmp_path / "nope"),
            "--dataset",
            "digits",
            "--student",
            "digits-mlp",
            "--output",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if line.startswith("error:")
    ]
    assert len(proc.stderr.strip().splitlines()) == 1 and "no store at" in proc.stderr


def test_views_and_augmentation_problems_are_reported_up_front(stores, tmp_path, capsys):
    from jobs import dump_logits, train_student

    code = dump_logits.main(
        ["--teacher", "digits-cnn", "--dataset", "digits", "--out", str(tmp_path / "a"), "--views", "2"]
    )
    assert code == 2 and "--views needs --augment" in capsys.readouterr().err
    code = dump_logits.main(
        ["--teacher", "digits-cnn", "--dataset", "digits", "--out", str(tmp_path / "b"), "--augment", "rot13"]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and "--augment applies to the stored views" in err and "'rot13' is not a built-in augmentation" in err
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    code = train_student.main(
        [
            "--store",
            stores["train"],
            "--dataset",
            "stdlib-small",
            "--student",
            "digits-mlp",
            "--output",
            str(tmp_path / "r"),
            "--augment",
            "digits-shift-rotate",
            "--loss",
            "js",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and "--augment applies to inputs of features" in err and "--loss must be kl, reverse-kl or jsd" in err
    )


def test_a_ray_address_where_nothing_listens_is_one_line_not_a_wait_forever(tmp_path):
    """ray.init waits for a cluster at a dead address forever; the job says so at once, writing nothing."""
    from helpers import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_ADDRESS=f"127.0.0.1:{free_port()}", PYTHONWARNINGS="ignore")
    argv = ["--teacher", "digits-cnn", "--dataset", "digits", "--out", str(tmp_path / "st")]
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.dump_logits", *argv], capture_output=True, text=True, timeout=120, env=env
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "cannot join the Ray cluster at RAY_ADDRESS=127.0.0.1:" in proc.stderr and "nothing answers" in proc.stderr
    assert not (tmp_path / "st").exists()


def test_an_object_store_that_does_not_answer_during_validation_is_one_line(tmp_path, capsys, monkeypatch):
    """Checking an hf:s3:// teacher asks the server for its config.json: a dead endpoint is one line."""
    from helpers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("LOGITSTORE_OBJECT_RETRY_SECONDS", "1")
    argv = ["--teacher", "hf:s3://nobody-answers/model", "--dataset", "digits", "--out", str(tmp_path / "st")]
    code, errors = run(dump_logits.main, argv, capsys)
    assert code == 2 and len(errors) == 1 and "did not answer for s3://nobody-answers/model/config.json" in errors[0]
    assert not (tmp_path / "st").exists()


def test_a_store_never_makes_the_trainer_run_code_it_names(dump, user_modules, tmp_path, capsys):
    """A store of views whose manifest names `evilaug:f` (importable, as a module in the working
    directory is): training without --augment refuses it in one line, and nothing imports it."""
    import json
    import shutil

    from jobs import inspect_store, sweep, verify_store

    marker = tmp_path / "ran"
    user_modules(
        "evilaug",
        f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("imported")
        def f(features, seeds):
            pathlib.Path({str(marker)!r}).write_text("called")
            return features
    """,
    )
    views = dump(
        teacher="digits-cnn", dataset="digits-eval", top_k=4, shard_size=100, views=2, augment="digits-shift-rotate"
    )
    store = tmp_path / "evil"
    shutil.copytree(views, store)
    raw = json.loads((store / "manifest.json").read_text())
    raw["views"]["augment"] = "evilaug:f"  # the shards' checksums are untouched: a sound store
    (store / "manifest.json").write_text(json.dumps(raw))
    argv = ["--store", str(store), "--dataset", "digits-eval", "--student", "digits-mlp", "--epochs", "1"]

    code, errors = run(train_student.main, argv + ["--output", str(tmp_path / "run")], capsys)
    assert code == 2 and len(errors) == 1, errors
    assert "names code evilaug:f" in errors[0] and "only when --augment evilaug:f is passed" in errors[0]
    assert len(errors[0]) < 250 + len(str(store))
    space = ["--space", '{"lr": {"grid": [0.01, 0.02]}}']
    code, errors = run(sweep.main, argv + ["--output", str(tmp_path / "sweep"), *space], capsys)
    assert code == 2 and any("only when --augment evilaug:f is passed" in e for e in errors), errors
    assert verify_store.main([str(store)]) == 0  # its data is sound
    assert inspect_store.main([str(store), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "evilaug:f is code (module:function) the store names: reading the store never runs it" in out
    assert not marker.exists() and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    "name,value,needle",
    [
        ("LOGITSTORE_LEASE_SECONDS", "0", "LOGITSTORE_LEASE_SECONDS='0' is not a number of seconds"),
        ("LOGITSTORE_OBJECT_RETRY_SECONDS", "soon", "LOGITSTORE_OBJECT_RETRY_SECONDS='soon'"),
        ("LOGITSTORE_CACHE", "FILE", "is a file, not a directory"),
    ],
)
def test_a_logitstore_setting_set_wrong_is_refused_before_anything_runs(
    monkeypatch, capsys, tmp_path, name, value, needle
):
    if value == "FILE":
        value = str(tmp_path / "a-file")
        (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(name, value)
    args = ["--teacher", "digits-cnn", "--dataset", "digits-eval", "--out", str(tmp_path / "s")]
    assert dump_logits.main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and len(errors[0]) < 250
