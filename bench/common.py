"""Shared bits of the bench scripts: Markdown tables, JSON figures, the machine they ran on."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path


def run_module(*args: str) -> None:
    """`python -m args...` in a process of its own, as a user runs a job; its output dropped, a failure raised."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", *args], check=True, stdout=subprocess.DEVNULL)


def drop_weights(run: Path) -> None:
    """A finished run's checkpoints and exports removed, its metrics.json kept: a bench of many LM
    runs keeps its figures, not gigabytes of weights."""
    import shutil

    for path in [run / "ray", run / "checkpoint", *run.glob("student*")]:
        shutil.rmtree(path, ignore_errors=True)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """rows -> a Markdown table of `columns` (key, format)."""
    lines = ["| " + " | ".join(key for key, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            "| " + " | ".join(fmt.format(row[key]) if row.get(key) is not None else "-" for key, fmt in columns) + " |"
        )
    return "\n".join(lines)


def machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


@contextlib.contextmanager
def quick_teacher(name: str, cache: Path, enabled: bool = True):
    """CI (--quick): a briefly trained `name` in the private cache `cache`, which the jobs load it
    from by name; LOGITSTORE_CACHE is restored afterwards. A no-op when not `enabled`."""
    if not enabled:
        yield
        return
    from trainer.builtin.cache import save_weights
    from trainer.builtin.stdlib import example

    saved = os.environ.get("LOGITSTORE_CACHE")
    os.environ["LOGITSTORE_CACHE"] = str(cache)
    try:
        save_weights(example.train_teacher(30, name=name), example.teacher_cache_path(name))
        yield
    finally:
        if saved is None:
            os.environ.pop("LOGITSTORE_CACHE", None)
        else:
            os.environ["LOGITSTORE_CACHE"] = saved


def add_work_flags(parser) -> None:
    """--work-dir and --json, the flags of the benches that keep their stores and runs."""
    parser.add_argument("--work-dir", default=None, help="where stores and runs go (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def work_dir(args, name: str) -> Path:
    """--work-dir, or a fresh temporary directory named after the bench."""
    import tempfile

    return Path(args.work_dir or tempfile.mkdtemp(prefix=f"{name}-"))


def digits_stores(work: Path, **dump_args) -> dict[str, str]:
    """The teacher's one pass over digits: {"train": store, "eval": store} in `work`."""
    from trainer.teacher.config import DumpConfig
    from trainer.teacher.pipeline import run_dump

    stores = {}
    for name, dataset in (("train", "digits"), ("eval", "digits-eval")):
        stores[name] = str(work / f"store-{name}")
        run_dump(DumpConfig(teacher="digits-cnn", dataset=dataset, out=stores[name], overwrite=True, **dump_args))
    return stores


def write_json(path: str, figures: dict) -> None:
    """Figures (with the machine) to `path`; an existing file's other keys are kept, so the three
    benches can write one file."""
    target = Path(path)
    old = json.loads(target.read_text()) if target.is_file() else {}
    target.write_text(json.dumps({**old, **figures, "machine": machine()}, indent=2, default=float) + "\n")


def random_token_parquet(path: Path, rows: int, length: int, vocab: int, seed: int = 0) -> str:
    """A Parquet file of `rows` blocks of `length` uniformly random token ids (the benches that
    time or size a teacher, whose cost does not depend on which tokens it reads)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.random.default_rng(seed).integers(0, vocab, (rows, length))
    pq.write_table(pa.table({"input_ids": pa.array(ids.tolist(), type=pa.list_(pa.int64()))}), path)
    return str(path)
