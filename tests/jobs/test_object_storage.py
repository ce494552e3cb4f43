"""The jobs on stores that live on object storage (s3:// against the session's S3 server on
127.0.0.1): dump -> verify -> inspect -> train, compared with the same jobs on local disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from jobs import dump_logits, inspect_store, train_student, verify_store
from logitstore import StoreReader
from logitstore.backends.zarr import unzip_group
from logitstore.checksum import files_checksum
from logitstore.storage import open_storage

pytestmark = pytest.mark.slow
TRAIN = ("--teacher", "digits-cnn", "--dataset", "digits", "--top-k", "5", "--shard-size", "500")
EVAL = ("--teacher", "digits-cnn", "--dataset", "digits-eval", "--top-k", "10", "--shard-size", "100")


# CI: tests/jobs/test_cluster.py's quick form (dump, verify, inspect and training with every path on
# s3) and StoreTests on s3 (tests/store/test_conformance.py: damage found, resume, reads).
@pytest.mark.battery
def test_dump_verify_inspect_and_train_on_s3_match_local_disk(s3, digits_stores, tmp_path, capsys):
    train_uri, eval_uri = s3("digits-train"), s3("digits-eval")
    assert dump_logits.main([*TRAIN, "--out", train_uri]) == 0
    assert dump_logits.main([*EVAL, "--out", eval_uri]) == 0
    # The same dump as the local fixture's: the same identity, shard bytes and decoded content.
    on_s3, on_disk = StoreReader(train_uri), StoreReader(digits_stores["train"])
    assert on_s3.manifest.content_sha256 == on_disk.manifest.content_sha256
    # Each s3 shard is one ZIP holding exactly the files of the shard on disk (FORMAT.md version 8).
    source = open_storage(train_uri)
    zipped = [files_checksum(unzip_group(source.get(s.name))) for s in on_s3.manifest.shards]
    assert zipped == [(s.sha256, s.num_bytes) for s in on_disk.manifest.shards]
    for (_, a), (_, b) in zip(on_s3.iter_shards(), on_disk.iter_shards()):
        assert a.equals(b)
    # A rerun finds it complete; verify and inspect read it.
    assert dump_logits.main([*TRAIN, "--out", train_uri]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert verify_store.main([train_uri]) == 0 and "all sound" in capsys.readouterr().out
    assert inspect_store.main([train_uri, "--out", str(tmp_path / "inspect")]) == 0
    assert json.loads((tmp_path / "inspect" / "summary.json").read_text())["samples"] == 1437
    # A flipped byte in a shard is caught by verify, naming the shard.
    damaged = s3("damaged")
    location = open_storage(damaged)
    location.put_many({name: source.get(name) for name in source.list()})
    chunk = next(n for n in location.list("shards/") if n.endswith(".zarr.zip"))
    blob = bytearray(location.get(chunk))
    blob[len(blob) // 2] ^= 0xFF
    location.put(chunk, bytes(blob))
    assert verify_store.main([damaged]) != 0
    assert chunk.split("/")[1] in capsys.readouterr().out
    # Training from the s3 stores into an s3 output gives the run training from and into local disk
    # gives, with the same files (Ray Train's run and checkpoints under ray/, on s3 too).
    out_uri, out_dir = s3("run"), tmp_path / "run"
    local = (digits_stores["train"], digits_stores["eval"])
    for stores, output in (((train_uri, eval_uri), out_uri), (local, str(out_dir))):
        argv = ["--store", stores[0], "--eval-store", stores[1], "--dataset", "digits-fewlabels"]
        argv += ["--eval-dataset", "digits-eval", "--student", "digits-mlp", "--output", output, "--epochs", "2"]
        assert train_student.main(argv) == 0
    on_s3 = json.loads(open_storage(out_uri).get("metrics.json"))
    on_disk = json.loads((out_dir / "metrics.json").read_text())
    for key in ("train_loss", "eval_accuracy", "teacher_agreement", "eval_kl_to_teacher"):
        assert on_s3[key] == pytest.approx(on_disk[key], rel=1e-6), key
    assert np.isfinite(on_s3["train_loss"]) and on_s3["exported"] == f"{out_uri}/student"
    names = set(open_storage(out_uri).list())
    for name in ("config.json", "curves.png", "logs/steps.csv", "checkpoint/model.pt", "student/model.safetensors"):
        assert name in names and (out_dir / name).is_file(), name
    assert any(n.startswith("ray/train/checkpoint_") for n in names)
    # A finished run on s3 is refused without --overwrite, as on disk.
    argv[argv.index("--output") + 1] = out_uri
    assert train_student.main(argv) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_a_dataset_uri_without_data_files_is_named(s3):
    from trainer.teacher.config import DumpConfig

    empty = s3("no-data")
    open_storage(empty).put("notes.txt", b"not data")
    problems = DumpConfig(teacher="digits-cnn", dataset=empty, out=s3("out")).validate()
    assert any(f"--dataset {empty!r} holds no .parquet, .jsonl or .json objects" in p for p in problems), problems


def test_an_hf_prefix_is_copied_once_per_content_and_without_weights_for_tokenising(s3, tmp_path, monkeypatch):
    """hf:s3://... models (trainer/inputs/modeldirs.py): a machine's copy is made once, again when
    an object changes, without the weights when only the tokenizer is needed; the driver's
    fingerprint of the weights, streamed from the objects, is the one of a local copy."""
    from trainer.inputs.modeldirs import local_dir
    from trainer.inputs.models import hf_files_sha256
    from trainer.inputs.specs import check_model_spec, check_tokenizer_spec

    monkeypatch.setenv("LOGITSTORE_CACHE", str(tmp_path / "cache"))
    uri = s3("model")
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(3 << 20)}
    files["tokenizer.json"] = b"{}"
    open_storage(uri).put_many(files)
    copy = Path(local_dir(uri))
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == files
    assert local_dir(uri) == str(copy) and len(list((tmp_path / "cache" / "hf-models").iterdir())) == 1
    light = Path(local_dir(uri, weights=False))
    assert sorted(p.name for p in light.iterdir()) == ["config.json", "tokenizer.json"]
    assert hf_files_sha256(uri) == hf_files_sha256(copy)
    open_storage(uri).put("model.safetensors", b"new weights")
    fresh = Path(local_dir(uri))
    assert fresh != copy and (fresh / "model.safetensors").read_bytes() == b"new weights"
    assert hf_files_sha256(uri) == hf_files_sha256(fresh) != hf_files_sha256(copy)
    assert check_model_spec(f"hf:{uri}", "--teacher") == [] and check_tokenizer_spec(uri) == []
    empty = s3("nothing")
    (problem,) = check_model_spec(f"hf:{empty}", "--teacher")
    assert "holds no config.json" in problem and empty in problem
    (problem,) = check_tokenizer_spec(empty)
    assert "holds no tokenizer files" in problem
