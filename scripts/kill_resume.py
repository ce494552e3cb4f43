"""Kill the dump at random moments (kill -9 of the driver and its whole local Ray cluster), resume
it by rerunning the same command, and check the final store equals an uninterrupted one.

    python -m scripts.kill_resume [--kills 20] [--seed 0] [--teacher stdlib-gpt] [--dataset stdlib-small-eval]
        [--shard-size 16] [--format zarr] [--uri s3://bucket/prefix [--start-s3-server] [--lease-seconds 4]]

With `--uri` the stores live on object storage under that prefix (the client's usual settings:
AWS_ENDPOINT_URL, credentials; `--start-s3-server` starts moto's S3 server on 127.0.0.1 in this
process, with the bucket, and points the dumps at it). A killed dump leaves its lease behind; the
rerun, on the same machine, finds the lease's holder process gone and takes it at once: no rerun
waits for a lease (one that found a live lease would fail, and so would this script). The dumps'
lease keeps its default length (60 s) unless `--lease-seconds` says otherwise.

The default workload (the LM teacher over 444 text blocks, 28 shards of 16 blocks) spends several
seconds writing shards, so that kills land mid-write; digits writes its shards in about a second.

For each trial: dump into a fresh directory, SIGKILL every process of the dump's session at a
random moment, then rerun the same command. Half the moments are drawn from the whole run
(0.5 s .. the uninterrupted run's wall time), half from the window in which the uninterrupted run
was writing shards (its first shard .. its manifest), where a kill can hit a shard mid-write. The
final store must decode to exactly the reference store (every shard), hold every sample id once
(0 duplicates, 0 missing) and pass `verify`. Exit status 1 on any mismatch.
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
from logitstore.storage import is_object_uri, open_storage


def dump_command(args: argparse.Namespace, out: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jobs.dump_logits",
        "--teacher",
        args.teacher,
        "--dataset",
        args.dataset,
        "--out",
        str(out),
        "--shard-size",
        str(args.shard_size),
        "--format",
        args.format,
        "--batch-size",
        "8",
        "--top-k",
        "5",
    ]


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


def store_state(out: str | Path) -> tuple[int, int, bool]:
    """(whole shards, partial shard writes, committed) of a store being written, local or on object storage."""
    if is_object_uri(out):
        names = open_storage(str(out)).list()
        attempts = {".".join(n.split("/")[1].split(".")[:2]) for n in names if n.startswith("shards/")}
        done = {a for a in attempts if f"shards/{a}.done" in names}
        return len(done), len(attempts - done), "manifest.json" in names
    out = Path(out)
    shards = len(list((out / "shards").glob("*"))) if (out / "shards").exists() else 0
    partial = len(list((out / ".tmp").glob("*"))) if (out / ".tmp").exists() else 0
    return shards, partial, (out / "manifest.json").exists()


def clear(out: str | Path) -> None:
    if is_object_uri(out):
        location = open_storage(str(out))
        location.delete_many(list(location.list()))
    else:
        shutil.rmtree(out, ignore_errors=True)


def run_to_completion(cmd: list[str], log, out: str | Path | None = None) -> tuple[float, float | None, float | None]:
    """-> (wall seconds, when the first shard appeared, when the manifest appeared); the last two
    only when `out` is given (the store is polled)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    first_shard = committed = None
    while proc.poll() is None:
        if out is not None:
            now = time.perf_counter() - start
            shards, _, done = store_state(out)
            if first_shard is None and shards:
                first_shard = now
            if committed is None and done:
                committed = now
        time.sleep(0.05 if out is None or not is_object_uri(out) else 0.2)
    if proc.returncode != 0:
        raise SystemExit(f"the dump failed with exit code {proc.returncode}; see the log")
    return time.perf_counter() - start, first_shard, committed


def compare(reference: str | Path, store: str | Path) -> tuple[bool, int, int]:
    """(content equal, duplicate ids, missing ids)."""
    ref, got = StoreReader(reference), StoreReader(store)
    ids = np.concatenate([data.sample_id for _, data in got.iter_shards()])
    ref_ids = np.concatenate([data.sample_id for _, data in ref.iter_shards()])
    duplicates = int(ids.size - np.unique(ids).size)
    missing = int(np.setdiff1d(ref_ids, ids).size)
    equal = (
        ref.num_shards == got.num_shards
        and all(a.equals(b) for (_, a), (_, b) in zip(ref.iter_shards(), got.iter_shards()))
        and got.verify() == []
    )
    return equal, duplicates, missing


def start_s3_server(uri: str) -> None:
    """moto's S3 server on 127.0.0.1 in this process (the dumps' sessions are killed, not this
    one), with the bucket of `uri`; the dumps find it through the environment."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_ALLOW_HTTP="true",
    )
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=uri.split("://", 1)[1].split("/")[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.kill_resume", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", default="stdlib-gpt")
    parser.add_argument("--dataset", default="stdlib-small-eval")
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--format", default="zarr", choices=["zarr", "arrow"])
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--uri", default=None, help="stores under this object-storage prefix (s3://bucket/prefix)")
    parser.add_argument("--start-s3-server", action="store_true", help="with --uri: moto's S3 server on 127.0.0.1")
    parser.add_argument("--lease-seconds", type=float, default=None, help="with --uri: the dumps' lease (default 60)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "dump.log", "ab")
    if args.uri:
        if args.lease_seconds is not None:
            os.environ["LOGITSTORE_LEASE_SECONDS"] = str(args.lease_seconds)
        if args.start_s3_server:
            start_s3_server(args.uri)

    reference = f"{args.uri.rstrip('/')}/reference" if args.uri else work / "reference"
    clear(reference)
    wall, first_shard, committed_at = run_to_completion(dump_command(args, reference), log, reference)
    first_shard = first_shard or 0.5
    committed_at = committed_at or wall
    total = StoreReader(reference).num_shards
    print(
        f"reference dump: {wall:.1f} s, {total} shards written from {first_shard:.1f} s to {committed_at:.1f} s",
        flush=True,
    )

    failures, phases, resumes = 0, {}, []
    for trial in range(args.kills):
        out = f"{args.uri.rstrip('/')}/chaos" if args.uri else work / "chaos"
        clear(out)
        proc = subprocess.Popen(dump_command(args, out), stdout=log, stderr=log, start_new_session=True)
        delay = rng.uniform(0.5, wall) if trial % 2 == 0 else rng.uniform(first_shard, committed_at)
        try:
            proc.wait(timeout=delay)
            finished_first = True
        except subprocess.TimeoutExpired:
            finished_first = False
        kill_session(proc.pid)
        proc.wait()
        shards_before, partial, committed = store_state(out)
        resume_wall = run_to_completion(dump_command(args, out), log)[0]  # at once: no waiting for the lease
        resumes.append(resume_wall)
        equal, duplicates, missing = compare(reference, out)
        failures += not (equal and duplicates == 0 and missing == 0)
        if finished_first:
            state = "it had finished"
        elif committed:
            state = "after the commit"
        elif shards_before:
            state = f"while writing: {shards_before} of {total} shards done, {partial} partial"
        else:
            state = "before any shard"
        phases[state.split(":")[0]] = phases.get(state.split(":")[0], 0) + 1
        print(
            f"trial {trial + 1}/{args.kills}: kill -9 at {delay:.1f} s ({state}); resume {resume_wall:.1f} s; "
            f"equal={equal} duplicates={duplicates} missing={missing}",
            flush=True,
        )
    print(f"kills by phase: {phases}")
    print(f"{args.kills} kills, {args.kills - failures} final stores equal to the uninterrupted one, {failures} not")
    if args.uri:
        print(
            "every rerun took the killed dump's lease at once: none waited or was refused "
            f"(resumes took {min(resumes):.1f} to {max(resumes):.1f} s)"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
