"""Kill the dump at random moments (kill -9 of the driver and its whole local Ray cluster), resume
it by rerunning the same command, and check the final store equals an uninterrupted one.

    python -m scripts.kill_resume [--kills 20] [--seed 0] [--dataset digits] [--shard-size 60] [--format zarr]

For each trial: dump into a fresh directory, SIGKILL every process of the dump's session at a
moment drawn uniformly from (0.5 s, the uninterrupted run's wall time), then rerun the same command
until it succeeds. The final store must decode to exactly the reference store (every shard), hold
every sample id once (0 duplicates, 0 missing) and pass `verify`. Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from logitstore import StoreReader


def dump_command(args: argparse.Namespace, out: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.dump_logits", "--teacher", args.teacher, "--dataset", args.dataset,
            "--out", str(out), "--shard-size", str(args.shard_size), "--format", args.format, "--batch-size", "64",
            "--top-k", "5"]


def kill_session(sid: int) -> None:
    """SIGKILL every process of a session: the driver, raylet, GCS and every Ray worker (they get
    their own process groups, but stay in the driver's session)."""
    listing = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        pid, session = (int(x) for x in line.split())
        if session == sid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_to_completion(cmd: list[str], log) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=log, stderr=log, start_new_session=True)
    if proc.returncode != 0:
        raise SystemExit(f"the dump failed with exit code {proc.returncode}; see the log")
    return time.perf_counter() - start


def compare(reference: Path, store: Path) -> tuple[bool, int, int]:
    """(content equal, duplicate ids, missing ids)."""
    ref, got = StoreReader(reference), StoreReader(store)
    ids = np.concatenate([data.sample_id for _, data in got.iter_shards()])
    ref_ids = np.concatenate([data.sample_id for _, data in ref.iter_shards()])
    duplicates = int(ids.size - np.unique(ids).size)
    missing = int(np.setdiff1d(ref_ids, ids).size)
    equal = ref.num_shards == got.num_shards and all(
        a.equals(b) for (_, a), (_, b) in zip(ref.iter_shards(), got.iter_shards())) and got.verify() == []
    return equal, duplicates, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.kill_resume", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", default="digits-cnn")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--shard-size", type=int, default=60)
    parser.add_argument("--format", default="zarr", choices=["zarr", "arrow"])
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "dump.log", "ab")

    reference = work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    wall = run_to_completion(dump_command(args, reference), log)
    print(f"reference dump: {wall:.1f} s, {StoreReader(reference).num_shards} shards", flush=True)

    failures = 0
    for trial in range(args.kills):
        out = work / "chaos"
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(dump_command(args, out), stdout=log, stderr=log, start_new_session=True)
        delay = rng.uniform(0.5, wall)
        try:
            proc.wait(timeout=delay)
            finished_first = True
        except subprocess.TimeoutExpired:
            finished_first = False
        kill_session(proc.pid)
        proc.wait()
        shards_before = len(list((out / "shards").glob("*"))) if (out / "shards").exists() else 0
        committed = (out / "manifest.json").exists()
        resume_wall = run_to_completion(dump_command(args, out), log)
        equal, duplicates, missing = compare(reference, out)
        failures += not (equal and duplicates == 0 and missing == 0)
        state = "finished before the kill" if finished_first else f"{shards_before} shards on disk, committed={committed}"
        print(f"trial {trial + 1}/{args.kills}: kill -9 at {delay:.1f} s ({state}); resume {resume_wall:.1f} s; "
              f"equal={equal} duplicates={duplicates} missing={missing}", flush=True)
    print(f"{args.kills} kills, {args.kills - failures} final stores equal to the uninterrupted one, {failures} not")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
