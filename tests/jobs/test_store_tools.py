"""The store tools: inspect_store prints a summary and draws its plots; verify_store names damaged shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs import inspect_store, verify_store
from logitstore.testing import TEMPS, build_store


def test_inspect_store_cli_prints_a_summary_and_writes_plots(tmp_path, capsys):
    build_store(tmp_path / "s", "arrow", np.arange(40), k=4, vocab=12, seed=2, lengths=np.full(40, 3))
    assert inspect_store.main([str(tmp_path / "s"), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "40 samples, 120 positions" in out and "recommendation: k=" in out and "\ntemperature: " in out
    assert [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()] == [
        "| 1",
        "| 2",
        "| 4",
    ]
    report = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert report["sampled_positions"] == 120 and [r["temperature"] for r in report["per_temperature"]] == list(TEMPS)
    assert report["teacher"]["spec"] == "random logits" and "weights_sha256" in report["teacher"]
    for name in ("tail_mass.png", "k_coverage.png", "confidence.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"

    (tmp_path / "empty").mkdir()
    assert inspect_store.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no store at" in err[0]


@pytest.mark.parametrize("backend", ["zarr", "arrow"])
def test_verify_store_cli_names_each_damaged_shard(tmp_path, backend, capsys):
    build_store(tmp_path / "st", backend, np.arange(30), shard_size=10)
    assert verify_store.main([str(tmp_path / "st")]) == 0 and "all sound" in capsys.readouterr().out
    for index in (0, 2):
        victim = sorted(p for p in (tmp_path / "st" / "shards").rglob("*") if p.is_file() and f"{index:05d}" in str(p))[
            -1
        ]
        victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    assert verify_store.main([str(tmp_path / "st")]) == 1
    out = capsys.readouterr().out.splitlines()
    damaged = [line for line in out if line.startswith("damaged:")]
    assert (
        len(damaged) == 2 and "shards/00000" in damaged[0] and "shards/00002" in damaged[1] and "2 damaged" in out[-1]
    )
    assert verify_store.main([str(tmp_path / "nope")]) == 2 and "no store at" in capsys.readouterr().err
