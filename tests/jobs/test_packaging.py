"""A core install (`pip install logitstore`, no extras: numpy, zarr, pyarrow, obstore) reads,
verifies and inspects stores, importing neither torch nor Ray (they are not even installed), and a
training job it cannot run says which extra it needs.

Battery: it makes a fresh virtual environment and installs the package from the package registry
(~1 min); `python -m pytest -m battery tests/jobs/test_packaging.py`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.battery]
REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden"


def test_a_core_install_verifies_and_inspects_a_golden_store_without_torch_or_ray(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", str(REPO)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    work = tmp_path / "work"  # not the repository: the installed packages, not the checkout's
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], capture_output=True, text=True, cwd=work, timeout=300)

    found = run("-c", "import importlib.util as u; print([m for m in ('torch', 'ray') if u.find_spec(m)])")
    assert found.stdout.strip() == "[]"
    for store in ("v8-s3-chat-zarr-zip", "v6-adaptive-text-zarr", "v3-delta-logq8-arrow"):
        verified = run("-m", "jobs.verify_store", str(GOLDEN / store))
        assert verified.returncode == 0 and verified.stdout.strip().endswith("all sound"), verified.stderr
        inspected = run("-m", "jobs.inspect_store", str(GOLDEN / store), "--out", str(tmp_path / store))
        assert inspected.returncode == 0, inspected.stderr
        assert inspected.stdout.startswith("store ") and (tmp_path / store / "summary.json").is_file()
        assert "no plots (matplotlib is not installed" in inspected.stderr
    loaded = run(
        "-c",
        "import sys, logitstore, jobs.verify_store, jobs.inspect_store; "
        "print(sorted(m for m in ('torch', 'ray', 'matplotlib', 'transformers') if m in sys.modules))",
    )
    assert loaded.stdout.strip() == "[]"
    refused = run("-m", "jobs.dump_logits", "--teacher", "digits-cnn", "--dataset", "digits", "--out", "s")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "pip install 'logitstore[train]'" in lines[0], lines
