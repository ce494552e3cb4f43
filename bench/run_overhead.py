"""Where a short training run's wall time goes: the 20-epoch digits run, side by side with Ray
Train's default controller poll (2 s) and ours (POLL_INTERVAL_ENV in trainer/student/run.py).

    python -m bench.run_overhead [--epochs 20] [--workers 1] [--json PATH]

Each run is `python -m jobs.train_student` in a fresh process (its own embedded Ray session, as a
user runs it): dumps of the digits train/eval splits, then the student from them. Printed per run:
process wall time, metrics.json's wall_seconds, startup_seconds, epochs_seconds (the sum of
epoch_seconds), wall / (startup + epochs) and the overhead breakdown (trainer/student/timing.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import markdown_table, write_json
from trainer.student.run import POLL_INTERVAL_ENV

DUMPS = (("digits", "digits-train"), ("digits-eval", "digits-eval"))


def _job(args: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def run_once(work: Path, name: str, poll: str, epochs: int, workers: int) -> dict:
    env = {**os.environ, POLL_INTERVAL_ENV[0]: poll}
    output = work / name
    process = _job(
        [
            "jobs.train_student",
            *("--store", "stores/digits-train", "--dataset", "digits", "--eval-dataset", "digits-eval"),
            *("--eval-store", "stores/digits-eval", "--student", "digits-mlp", "--output", str(output)),
            *("--epochs", str(epochs), "--workers", str(workers), "--overwrite"),
        ],
        env,
        work,
    )
    m = json.loads((output / "metrics.json").read_text())
    return {
        "run": name,
        "controller_poll_s": float(poll),
        "process_seconds": process,
        "wall_seconds": m["wall_seconds"],
        "startup_seconds": m["startup_seconds"],
        "epochs_seconds": m["epochs_seconds"],
        "after_startup_over_epochs": (m["wall_seconds"] - m["startup_seconds"]) / m["epochs_seconds"],
        "first_batch_seconds (inside the epochs)": m["first_batch_seconds"],
        **{f"overhead.{k}": v for k, v in m["overhead"].items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
        for dataset, store in DUMPS:
            dump = ["jobs.dump_logits", "--teacher", "digits-cnn", "--dataset", dataset, "--out", f"stores/{store}"]
            _job(dump, env, work)
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]
        rows = [
            run_once(work, "Ray's default poll", "2.0", args.epochs, args.workers),
            run_once(work, "our poll", POLL_INTERVAL_ENV[1], args.epochs, args.workers),
        ]
    keys = [k for k in rows[0] if k != "run"]
    table = [{"figure": k, **{r["run"]: r[k] for r in rows}} for k in keys]
    print(f"digits-mlp from the digits stores, {args.epochs} epochs, {args.workers} worker(s)")
    print(markdown_table(table, [("figure", "{}"), *((r["run"], "{:.2f}") for r in rows)]))
    if args.json:
        write_json(args.json, {"run_overhead": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
