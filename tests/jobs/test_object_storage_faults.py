"""Dumps to object storage when things go wrong, end to end: each dump is its own process (and its
own local Ray cluster) against an S3 server on 127.0.0.1 that this test owns, so it can stop it.

Battery (each starts Ray clusters of its own, ~1 min); CI keeps the in-process representatives in
tests/store/test_object_store.py (an unreachable endpoint, the lease's rules)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from logitstore import StoreReader
from logitstore.errors import StoreNotFoundError
from logitstore.manifest import read_manifest
from logitstore.storage import open_storage

pytestmark = [pytest.mark.slow, pytest.mark.battery]
LEASE_SECONDS = 3


@pytest.fixture
def server(monkeypatch):
    """A moto S3 server of this test's own (stop() and start() again keep its buckets: moto's state
    lives in this process); the dumps and this process find it through the environment."""
    import boto3
    from helpers import free_port
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LOGITSTORE_OBJECT_RETRY_SECONDS", "2")
    monkeypatch.setenv("LOGITSTORE_LEASE_SECONDS", str(LEASE_SECONDS))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    class Server:
        endpoint = f"http://127.0.0.1:{port}"

        def start(self):
            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            self.moto.start()

        def stop(self):
            self.moto.stop()

    s = Server()
    s.start()
    bucket = f"faults-{port}"  # a bucket (and so a client) of this endpoint only
    boto3.client("s3").create_bucket(Bucket=bucket)
    s.uri = f"s3://{bucket}/store"
    yield s
    s.stop()


def dump(uri: str, shard_size: int = 100, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jobs.dump_logits", "--teacher", "digits-cnn", "--dataset", "digits"]
    cmd += ["--out", uri, "--shard-size", str(shard_size), "--top-k", "5"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_marker(uri: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    location, deadline = open_storage(uri), time.monotonic() + timeout
    while not any(n.endswith(".done") for n in location.list("shards/")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.1)


def test_a_server_that_stops_mid_dump_is_named_nothing_is_committed_and_the_rerun_completes(server, teacher_cache):
    first = dump(server.uri)
    wait_for_marker(server.uri, first)
    server.stop()
    _, err = first.communicate(timeout=300)
    assert first.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the object store at") and "did not answer" in last and server.endpoint in last, last
    server.start()
    with pytest.raises(StoreNotFoundError, match="no manifest"):
        read_manifest(server.uri)
    time.sleep(LEASE_SECONDS + 1.5)  # the failed dump could not release its lease: it expires
    rerun = dump(server.uri)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    assert "resuming the unfinished dump" in err
    reader = StoreReader(server.uri)
    assert reader.verify() == [] and reader.manifest.num_samples == 1437


def test_a_second_dump_is_refused_while_the_lease_lives_and_proceeds_once_its_holder_is_killed(server, teacher_cache):
    # 144 shards of 10: the holder is still writing when the second dump, started after its first
    # shard, reaches the lease (~10 s of start-up).
    holder = dump(server.uri, 10, start_new_session=True)
    wait_for_marker(server.uri, holder)
    second = dump(server.uri, 10)
    _, err = second.communicate(timeout=300)
    assert second.returncode != 0
    assert f"pid {holder.pid} on " in err and "holds the lease" in err, err[-2000:]
    # kill -9 of the holder's whole session (driver, raylet, workers): nothing releases the lease.
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    subprocess.run(["pkill", "-9", "-s", str(holder.pid)], check=False)
    time.sleep(LEASE_SECONDS + 1.5)
    third = dump(server.uri, 10)
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err[-2000:]
    reader = StoreReader(server.uri)
    assert reader.verify() == [] and reader.manifest.num_samples == 1437


def test_a_server_that_stops_during_training_ends_the_run_at_once_with_one_line(server, teacher_cache, tmp_path):
    """The store's shards are read again every epoch (a join task holds one at a time): once the
    server is gone, a join task finds it so, after LOGITSTORE_OBJECT_RETRY_SECONDS. Retrying the
    workers would find it so again: one line naming the endpoint, exit 2, at once (Ray Train
    restarted the workers --max-failures times, then a traceback)."""
    first = dump(server.uri)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "jobs.train_student", "--store", server.uri, "--dataset", "digits"]
    cmd += ["--student", "digits-mlp", "--output", str(out), "--epochs", "20", "--log-every", "5", "--log-to", "csv"]
    log = (tmp_path / "stderr").open("w")  # (a pipe left unread could fill up and block the job)
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    steps, deadline = out / "logs" / "steps.csv", time.monotonic() + 240
    while not (steps.exists() and len(steps.read_text().splitlines()) > 1):  # a header and a training step
        assert job.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
        assert time.monotonic() < deadline, "training did not start in time"
        time.sleep(0.1)
    server.stop()
    stopped = time.monotonic()
    job.wait(timeout=300)
    seconds, err = time.monotonic() - stopped, (tmp_path / "stderr").read_text()
    server.start()  # for the fixture's teardown
    print(f"the job ended {seconds:.1f} s after the server stopped")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert job.returncode == 2 and len(errors) == 1, err[-3000:]
    assert errors[0].startswith("error: the object store at") and "did not answer" in errors[0], errors
    assert server.endpoint in errors[0] and len(errors[0]) < 250, errors
    tracebacks = [line for line in err.splitlines() if "Traceback" in line and "PlacementGroupCleaner" not in line]
    assert tracebacks == [] and seconds < 60, (seconds, err[-3000:])
    assert not (out / "metrics.json").exists()
