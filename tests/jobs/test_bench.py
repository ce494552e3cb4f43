"""The bench scripts' --quick modes run end to end and write every figure the goals name."""

from __future__ import annotations

import json
import math

import pytest

STORE_KEYS = ("bytes_per_entry", "kl_distortion", "read_vs_zstd")
KEYS = (
    *STORE_KEYS,
    "dump_vs_bare",
    "store_vs_labels_epoch",
    "online_vs_offline_8",
    "scaling_dump_2v1",
    "scaling_train_2v1",
)


def test_the_quick_store_bench_writes_its_figures(tmp_path, capsys):
    """CI's representative of the benches (the dump and train ones run in the battery)."""
    from bench import store

    out = tmp_path / "bench.json"
    assert store.main(["--quick", "--json", str(out)]) == 0
    assert capsys.readouterr().out.count("|---|") >= 1
    figures = json.loads(out.read_text())
    assert set(STORE_KEYS) <= set(figures) and 0 < figures["kl_distortion"] < 1e-4
    assert all(math.isfinite(x) and x > 0 for x in figures["bytes_per_entry"].values())


@pytest.mark.slow
@pytest.mark.battery
def test_quick_benches_write_every_figure(ray_session, tmp_path, capsys):
    from bench import dump, store, train

    out = tmp_path / "bench.json"
    for bench in (store, dump, train):
        assert bench.main(["--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("|---|") >= 3  # each printed its Markdown table
    figures = json.loads(out.read_text())
    assert set(KEYS) <= set(figures)
    flat = [figures[k] for k in KEYS if k != "bytes_per_entry"] + list(figures["bytes_per_entry"].values())
    assert all(isinstance(x, float) and math.isfinite(x) and x > 0 for x in flat), figures
    rows = {(r["backend"], r["codec"]): r for r in figures["store"]["rows"]}
    # The headline codec is far smaller than raw float32 and its distortion is small.
    assert rows[("zarr", "delta/logq10")]["bytes_per_entry"] < 0.6 * rows[("zarr", "plain/float32")]["bytes_per_entry"]
    assert figures["kl_distortion"] < 1e-4
    assert figures["machine"]["cpus"] >= 1


@pytest.mark.slow
@pytest.mark.battery
def test_the_quick_adaptive_k_bench_compares_with_fixed_k(tmp_path, capsys):
    from bench import adaptive_k

    out = tmp_path / "bench.json"
    assert adaptive_k.main(["--quick", "--json", str(out)]) == 0
    assert capsys.readouterr().out.count("\n|---") == 2  # its two tables
    figures = json.loads(out.read_text())
    rows = figures["adaptive_k"]["rows"]
    # more mass kept costs more bytes and leaves less KL, for fixed and adaptive alike
    for kind in ("fixed", "adaptive"):
        chosen = [r for r in rows if (r["top_p"] is None) == (kind == "fixed")]
        chosen.sort(key=lambda r: r["k_mean"])
        assert all(a["bytes_delta/logq8"] < b["bytes_delta/logq8"] for a, b in zip(chosen, chosen[1:])), kind
        assert all(a["kl_t1"] >= b["kl_t1"] for a, b in zip(chosen, chosen[1:])), kind
    assert all(math.isfinite(figures[k]) and figures[k] > 0 for k in ("adaptive_bytes_ratio", "adaptive_kl_ratio_t1"))


@pytest.mark.slow
@pytest.mark.battery
def test_the_quick_loss_memory_bench_finds_the_chunked_loss_smaller(tmp_path, capsys):
    from bench import loss_memory

    out = tmp_path / "bench.json"
    assert loss_memory.main(["--quick", "--json", str(out)]) == 0
    assert capsys.readouterr().out.count("\n|---") == 1
    figures = json.loads(out.read_text())
    # the output layer and loss chunk by chunk never hold [positions, V]: well under the whole loss's peak
    assert figures["chunked_peak_mb"] < 0.7 * figures["whole_peak_mb"], figures


@pytest.mark.slow
@pytest.mark.battery
def test_the_overhead_bench_accounts_for_the_wall_time(tmp_path, capsys):
    from bench import run_overhead

    out = tmp_path / "bench.json"
    assert run_overhead.main(["--epochs", "2", "--json", str(out)]) == 0
    assert capsys.readouterr().out.count("\n|---") == 1
    for run in json.loads(out.read_text())["run_overhead"]:
        parts = run["startup_seconds"] + run["epochs_seconds"]
        parts += sum(run[f"overhead.{k}"] for k in ("between_epochs", "after_last_epoch", "outputs"))
        assert parts == pytest.approx(run["wall_seconds"], abs=0.05), run
