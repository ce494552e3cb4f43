"""The teacher pass on real data, through the real Ray Data pipeline, into real Zarr and Arrow stores."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from helpers import all_shards

from logitstore import StoreReader, plan_shards, read_manifest, topk_probabilities
from trainer.builtin import digits
from trainer.inputs.models import build_model, weights_sha256
from trainer.teacher.config import DumpConfig
from trainer.teacher.pipeline import run_dump

REPO = Path(__file__).resolve().parents[2]


def teacher_logits(split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = digits.load_split(split)
    with torch.no_grad():
        z = build_model("digits-cnn").eval()(torch.from_numpy(rows["features"])).numpy()
    return rows["id"], z


def test_both_backends_store_identical_content(dump):
    zarr_store = dump(teacher="digits-cnn", dataset="digits-eval", top_k=10, format="zarr", shard_size=100)
    arrow_store = dump(teacher="digits-cnn", dataset="digits-eval", top_k=10, format="arrow", shard_size=100)
    a, b = all_shards(zarr_store), all_shards(arrow_store)
    assert len(a) == len(b) == 4
    assert all(x.equals(y) for x, y in zip(a, b))
    ma, mb = read_manifest(zarr_store), read_manifest(arrow_store)
    assert (ma.backend, mb.backend) == ("zarr", "arrow")
    assert ma.teacher == mb.teacher and ma.dataset == mb.dataset
    assert [(s.first_id, s.last_id, s.num_samples) for s in ma.shards] == [
        (s.first_id, s.last_id, s.num_samples) for s in mb.shards
    ]


def test_k_equal_vocab_gives_the_teachers_softmax_at_every_temperature(dump):
    store = dump(teacher="digits-cnn", dataset="digits-eval", top_k=10, format="zarr", shard_size=100)
    ids, z = teacher_logits("eval")
    reader = StoreReader(store)
    got = reader.lookup(ids)
    for col, T in enumerate(reader.manifest.temperatures):
        probs, tail = topk_probabilities(got.topk_logit, got.logsumexp[:, col], T)
        dense = np.zeros_like(z)
        np.put_along_axis(dense, got.topk_index.astype(np.int64), probs, axis=1)
        expected = torch.softmax(torch.from_numpy(z).double() / T, dim=1).numpy()
        np.testing.assert_allclose(dense, expected, rtol=0, atol=2e-6)
        assert np.all(tail < 2e-6)
    # Sorted by descending logit, and the logits are the teacher's.
    np.testing.assert_allclose(got.topk_logit, -np.sort(-z, axis=1), rtol=1e-5, atol=1e-5)


def test_two_worker_dump_equals_one_worker_dump(dump):
    """Each teacher actor runs the same number of threads whatever --workers (a CPU's sums depend on it)."""
    one = dump(teacher="digits-cnn", dataset="digits", top_k=5, shard_size=500)
    two = dump(teacher="digits-cnn", dataset="digits", top_k=5, shard_size=500, workers=2)
    a, b = all_shards(one), all_shards(two)
    assert len(a) == len(b) == 3
    assert all(x.equals(y) for x, y in zip(a, b))


def _teacher_actors() -> set[str]:
    import ray._private.state

    return {
        actor_id
        for actor_id, actor in ray._private.state.actors().items()
        if "ShardDumper" in actor.get("ActorClassName", "")
    }


def test_a_small_dataset_makes_a_shard_for_each_worker_and_runs_on_that_many_actors(dump):
    """360 rows with --workers 2 and --shard-size 1024: two shards of 180, on two teacher actors
    (Ray's actor table), not one shard on one actor while the other idles."""
    before = _teacher_actors()
    store = dump(teacher="digits-cnn", dataset="digits-eval", top_k=5, workers=2)
    m = read_manifest(store)
    assert m.layout.shard_size == 180 and [s.num_samples for s in m.shards] == [180, 180]
    assert m.config["shard_size"] == 1024 and m.config["workers"] == 2  # what was asked, beside the plan
    assert len(_teacher_actors() - before) == 2
    # A rerun with other --workers finds the same dump complete (the plan it recorded holds).
    again = run_dump(DumpConfig(teacher="digits-cnn", dataset="digits-eval", top_k=5, workers=1, out=store))
    assert again.manifest.content_sha256 == m.content_sha256 and again.resumed_shards == 2


def test_manifest_records_identity_and_a_deterministic_plan(dump):
    store = dump(teacher="digits-cnn", dataset="digits-eval", top_k=10, format="zarr", shard_size=100)
    m = read_manifest(store)
    ids = digits.load_split("eval")["id"]
    assert m.teacher["weights_sha256"] == weights_sha256(build_model("digits-cnn"))
    assert m.dataset["ids_sha256"] == hashlib.sha256(np.sort(ids).astype("<i8").tobytes()).hexdigest()
    plan = plan_shards(np.sort(ids), 100)
    assert [s.first_id for s in m.shards] == plan.first_ids.tolist()
    assert [s.last_id for s in m.shards] == plan.last_ids.tolist()
    assert m.num_samples == 360 and m.num_positions == 360 and m.vocab_size == 10 and m.index_dtype == "uint16"
    assert m.config["top_k"] == 10 and m.temperatures == (1.0, 2.0, 4.0)
    assert m.teacher["device"] == "cpu" and m.teacher["cpu_threads"] == 1  # a CPU's sums depend on its thread count
    assert not (Path(store) / ".tmp").exists()
    assert StoreReader(store).verify() == []


def test_user_module_teacher_and_parquet_dataset_from_the_working_directory(tmp_path, teacher_cache):
    """A user's own module (importable only from their cwd) runs inside Ray workers; ids come from the file."""
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        import torch
        def teacher():
            torch.manual_seed(7)
            return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 12))
    """)
    )
    rows = digits.load_split("eval")
    order = np.random.default_rng(0).permutation(len(rows["id"]))
    ids = rows["id"][order] * 10 + 3  # arbitrary, unsorted ids
    labels = [None if i % 3 else int(v) for i, v in enumerate(rows["label"][order])]
    table = pa.table(
        {
            "id": ids,
            "features": [list(map(float, f)) for f in rows["features"][order]],
            "label": pa.array(labels, type=pa.int64()),
        }
    )
    (tmp_path / "data").mkdir()
    pq.write_table(table.slice(0, 200), tmp_path / "data" / "part-0.parquet")
    pq.write_table(table.slice(200), tmp_path / "data" / "part-1.parquet")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["LOGITSTORE_CACHE"] = str(teacher_cache)
    argv = [
        "--teacher",
        "my_models:teacher",
        "--dataset",
        "data",
        "--out",
        "store",
        "--top-k",
        "3",
        "--format",
        "arrow",
        "--shard-size",
        "128",
        "--workers",
        "1",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.dump_logits", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bytes per stored (index, value) entry" in proc.stdout
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr  # a healthy run is quiet
    # The same command again is answered from the manifest and the files' digest: Ray is never imported.
    rerun = "import sys; from jobs import dump_logits; dump_logits.main(sys.argv[1:]); print('ray' in sys.modules)"
    again = subprocess.run(
        [sys.executable, "-c", rerun, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "nothing to do" in again.stderr and again.stdout.endswith("False\n"), again
    # One feature value changed: the digest differs, so only a full pass could tell (and would refuse).
    from trainer.teacher.config import DumpConfig
    from trainer.teacher.rerun import answer_without_ray

    changed = table.slice(200).to_pydict()
    changed["features"][0][0] += 1.0
    pq.write_table(pa.table(changed, schema=table.schema), tmp_path / "data" / "part-1.parquet")
    out, data = str(tmp_path / "store"), str(tmp_path / "data")
    cfg = DumpConfig(teacher="my_models:teacher", dataset=data, out=out, top_k=3, format="arrow", shard_size=128)
    assert answer_without_ray(cfg) is None
    sys.path.insert(0, str(tmp_path))
    try:
        import my_models

        with torch.no_grad():
            z = my_models.teacher()(torch.from_numpy(rows["features"][order])).numpy()
    finally:
        sys.path.remove(str(tmp_path))
    reader = StoreReader(tmp_path / "store")
    assert reader.manifest.vocab_size == 12 and reader.num_shards == 3
    got = reader.lookup(ids)
    np.testing.assert_allclose(got.topk_logit, -np.sort(-z, axis=1)[:, :3], rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["teacher"]["spec"] == "my_models:teacher"


def test_digits_rows_are_scikit_learns(monkeypatch):
    """The rows read from scikit-learn's shipped CSV (no sklearn import in Ray workers) are exactly
    load_digits', and the fallback through load_digits gives the same splits."""
    from sklearn.datasets import load_digits

    from trainer.builtin import digits_data

    reference = load_digits()
    data, target = digits_data._all_digits()
    assert digits_data._shipped_csv() is not None
    np.testing.assert_array_equal(data, reference.data)
    np.testing.assert_array_equal(target, reference.target)
    shipped = {split: digits_data.load_split(split) for split in ("train", "train-fewlabels", "eval")}
    monkeypatch.setattr(digits_data, "_shipped_csv", lambda: None)
    digits_data._all_digits.cache_clear()
    try:
        for split, rows in shipped.items():
            fallback = digits_data.load_split(split)
            assert all(np.array_equal(rows[key], fallback[key]) for key in rows)
            assert rows["features"].dtype == np.float32 and len(rows["id"]) == (360 if split == "eval" else 1437)
    finally:
        digits_data._all_digits.cache_clear()


def test_a_text_dump_without_tokenizer_is_the_same_dump_when_rerun_and_another_k_is_refused(dump, lm_teacher):
    # The manifest records the flags as given (--tokenizer ""), the identity says "bytes": the same
    # command again must pass validation (and find the store complete), another --top-k must not.
    from trainer.teacher.config import DumpConfig

    args = {"teacher": "lm_models:tiny_gpt", "dataset": "stdlib-small-eval", "format": "zarr", "shard_size": 128}
    store = dump(top_k=8, **args)
    assert read_manifest(store).config["tokenizer"] == ""
    assert DumpConfig(out=store, top_k=8, **args).validate() == []
    (problem,) = DumpConfig(out=store, top_k=6, **args).validate()
    assert "differ in: top_k" in problem
