"""Stores on object storage, against a real S3-compatible server on 127.0.0.1 (moto's server mode,
the `s3` fixture): the same content as on disk, the commit without rename (attempt-unique shard
names, a marker per attempt, a create-only manifest), resume, the lease, and a server that is gone.

moto checks a condition and writes without one lock, so two truly concurrent create-only writes
can both succeed there: the race logic is tested by interleaving the steps of two writers one
after the other (each step a real request), which is what the server's conditions decide."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import logitstore
from logitstore import StoreReader
from logitstore.backends.zarr import unzip_group
from logitstore.checksum import files_checksum
from logitstore.errors import StoreLockedError, StoreNotFoundError
from logitstore.manifest import read_manifest, shard_name
from logitstore.planning import plan_shards
from logitstore.storage import ObjectPreconditionError, ObjectStoreRefusedError, StoreUnreachableError
from logitstore.storage.lease import LEASE_NAME, LeaseLostError, StoreLease
from logitstore.storage.objects import ObjectStorage
from logitstore.testing import (
    CODECS,
    TEST_TEACHER,
    assert_same_content,
    build_store,
    dataset_record,
    layout_for,
    random_shard,
)
from logitstore.writer import StoreWriter

SCHEMA = json.loads((Path(logitstore.__file__).parent / "manifest.schema.json").read_text())
IDS = np.arange(0, 40, 2)  # 20 samples, shards of 7: 3 shards


@pytest.mark.parametrize("backend,codec", [("zarr", "plain"), ("arrow", "plain"), ("arrow", "logq")])
def test_a_store_on_s3_holds_the_same_bytes_and_content_as_on_disk(s3, tmp_path, backend, codec):
    uri = s3(f"same-{backend}")
    remote = build_store(uri, backend, IDS, codec=CODECS[codec], seed=3)
    local = build_store(tmp_path / "st", backend, IDS, codec=CODECS[codec], seed=3)
    on_s3, on_disk = read_manifest(uri), read_manifest(tmp_path / "st")
    # Each shard one object under an attempt-tagged name holding the files written to disk: the
    # Arrow file itself (version 7), the Zarr group's files zipped (version 8).
    location = ObjectStorage(uri)
    for s, d in zip(on_s3.shards, on_disk.shards):
        assert s.name == f"shards/{s.index:05d}.{s.name.split('.')[1]}.{'zarr.zip' if backend == 'zarr' else 'arrow'}"
        blob, shard = location.get(s.name), tmp_path / "st" / d.name
        assert files_checksum({"": blob}) == (s.sha256, s.num_bytes)
        if backend == "arrow":
            assert blob == shard.read_bytes()
        else:
            on_disk_files = {p.relative_to(shard).as_posix(): p.read_bytes() for p in shard.rglob("*") if p.is_file()}
            assert unzip_group(blob) == on_disk_files
    assert on_s3.format_version == (8 if backend == "zarr" else 7) and on_disk.format_version < 7
    jsonschema.validate(json.loads(ObjectStorage(uri).get("manifest.json")), SCHEMA)
    reader = StoreReader(uri)
    assert reader.verify() == []
    for (_, got), want, disk in zip(reader.iter_shards(), remote, local):
        assert_same_content(got, want, CODECS[codec])
        assert np.array_equal(got.sample_id, disk.sample_id)
    # Nothing but the store's objects: no lease, no pending record, one attempt per shard.
    names = ObjectStorage(uri).list()
    assert LEASE_NAME not in names and ".pending.json" not in names
    assert {n.split("/")[1].split(".")[0] for n in names if n.endswith(".done")} == {"00000", "00001", "00002"}


def _writer(uri: str, backend: str = "zarr", seed: int = 0, lease_seconds: float | None = None):
    layout = layout_for(backend, k=4, vocab=10, shard_size=7)
    plan = plan_shards(IDS, 7)
    writer = StoreWriter(uri, lease_seconds).__enter__()
    writer.start(layout, plan, {"test": seed}, overwrite=False)
    rng = np.random.default_rng(seed)
    shards = [random_shard(rng, IDS[i * 7 : i * 7 + int(plan.counts[i])], 4, 10) for i in range(plan.num_shards)]
    return writer, shards


def _commit(writer, infos):
    return writer.commit(infos, teacher=TEST_TEACHER, dataset=dataset_record(IDS, 0), config={})


def test_a_duplicated_shard_write_is_never_visible_twice(s3):
    uri = s3("dup")
    writer, shards = _writer(uri)
    first = writer.shard_writer().write(0, shards[0])
    again = writer.shard_writer().write(0, shards[0])  # a retried task whose first run also finished
    assert first.name != again.name and (first.sha256, first.num_bytes) == (again.sha256, again.num_bytes)
    infos = [again] + [writer.shard_writer().write(j, shards[j]) for j in (1, 2)]
    manifest = _commit(writer, infos)
    writer.__exit__(None, None, None)
    names = ObjectStorage(uri).list("shards/")
    assert not any(n.startswith(first.name) for n in names)  # the commit deleted the unnamed attempt
    assert sum(n.endswith(".done") for n in names) == 3
    reader = StoreReader(uri)
    assert reader.verify() == [] and manifest.num_samples == 20
    assert np.array_equal(np.concatenate([d.sample_id for _, d in reader.iter_shards()]), IDS)


def test_a_crashed_dump_resumes_keeping_whole_attempts_and_dropping_leftovers(s3):
    uri = s3("resume")
    writer, shards = _writer(uri)
    kept = writer.shard_writer().write(0, shards[0])
    # Shard 1: attempts cut off before their markers: a whole ZIP object, and a version-7 group.
    location = ObjectStorage(uri)
    cut = shard_name(1, "zarr", "0123456789ab")
    location.put(cut, _files("zarr", writer, shards[1], one_object=True)[""])
    cut_v7 = "shards/00001.00000000000a.zarr"
    location.put_many({f"{cut_v7}/{rel}": blob for rel, blob in _files("zarr", writer, shards[1]).items()})
    # Shard 2: a marked attempt whose bytes were damaged afterwards.
    damaged = writer.shard_writer().write(2, shards[2])
    blob = bytearray(location.get(damaged.name))
    blob[len(blob) // 2] ^= 0xFF
    location.put(damaged.name, bytes(blob))
    _die(writer._exclusive)  # the dump dies (kill -9): no release, no commit
    with pytest.raises(StoreNotFoundError, match="no manifest"):
        read_manifest(uri)
    # The rerun waits for the dead holder's lease to expire, then keeps shard 0 only.
    time.sleep(0.1)
    resumed, _ = _resume(uri, lease_seconds=3)
    assert set(resumed.resumed) == {0} and resumed.resumed[0].name == kept.name
    names = location.list("shards/")
    assert not any(n.startswith((cut, cut_v7, damaged.name)) for n in names)  # leftovers deleted by the resume
    infos = [resumed.resumed[0]] + [resumed.shard_writer().write(j, shards[j]) for j in (1, 2)]
    _commit(resumed, infos)
    resumed.__exit__(None, None, None)
    assert StoreReader(uri).verify() == []


def test_a_version_7_dump_resumed_by_this_writer_keeps_its_zarr_groups_and_commits_version_8(s3):
    """A dump left unfinished by a version-7 writer (a Zarr group as a prefix of objects, marked)
    is resumed: its sound group is kept as it is, the new shards are ZIP objects."""
    uri = s3("resume-v7")
    writer, shards = _writer(uri)
    files = _files("zarr", writer, shards[0])
    old = "shards/00000.00000000000b.zarr"
    location = ObjectStorage(uri)
    location.put_many({f"{old}/{rel}": blob for rel, blob in files.items()})
    sha, nbytes = files_checksum(files)
    info = {"index": 0, "name": old, "first_id": int(shards[0].sample_id[0]), "last_id": int(shards[0].sample_id[-1])}
    info |= {"num_samples": shards[0].num_samples, "num_positions": shards[0].num_positions}
    location.put("shards/00000.00000000000b.done", json.dumps({**info, "num_bytes": nbytes, "sha256": sha}).encode())
    _die(writer._exclusive)
    resumed, _ = _resume(uri, lease_seconds=3)
    assert set(resumed.resumed) == {0} and resumed.resumed[0].name == old
    infos = [resumed.resumed[0]] + [resumed.shard_writer().write(j, shards[j]) for j in (1, 2)]
    manifest = _commit(resumed, infos)
    resumed.__exit__(None, None, None)
    assert manifest.format_version == 8 and [s.name.endswith(".zip") for s in manifest.shards] == [False, True, True]
    jsonschema.validate(json.loads(location.get("manifest.json")), SCHEMA)
    reader = StoreReader(uri)
    assert reader.verify() == []
    for (_, got), want in zip(reader.iter_shards(), shards):
        assert_same_content(got, want, CODECS["plain"])


def _die(lease: StoreLease) -> None:
    """The holder stops renewing and never releases (a kill -9, as far as the lease can tell)."""
    lease._stop.set()
    lease._thread.join()


def _files(backend, writer, data, one_object=False):
    from logitstore.backends import get_backend

    arrays = writer.layout.codec.encode(data)
    return {"": get_backend(backend).encode_object(arrays)} if one_object else get_backend(backend).encode(arrays)


def _resume(uri, lease_seconds):
    deadline = time.monotonic() + 30
    while True:
        try:
            return _writer(uri, lease_seconds=lease_seconds)
        except StoreLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_live_lease_refuses_a_second_writer_naming_the_holder_and_an_expired_one_passes(s3):
    uri = s3("lease")
    holder = StoreLease(ObjectStorage(uri), ttl=3).__enter__()
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()} on .*holds the lease on {uri}"):
        StoreLease(ObjectStorage(uri), ttl=3).__enter__()
    time.sleep(2.5)  # the holder renews every second: still live after more than one ttl/3
    with pytest.raises(StoreLockedError):
        StoreLease(ObjectStorage(uri), ttl=3).__enter__()
    _die(holder)  # the holder dies without releasing
    time.sleep(4.5)  # > ttl (+ the server's one-second Last-Modified)
    taker = StoreLease(ObjectStorage(uri), ttl=3).__enter__()
    with pytest.raises(LeaseLostError, match="taken over"):
        holder.check()  # a holder that comes back must not commit
    taker.__exit__(None, None, None)
    assert ObjectStorage(uri).head(LEASE_NAME) is None


def test_of_two_writers_taking_over_an_expired_lease_exactly_one_wins(s3):
    uri = s3("race")
    dead = StoreLease(ObjectStorage(uri), ttl=2).__enter__()
    _die(dead)
    time.sleep(3.5)
    location = ObjectStorage(uri)
    a, b = StoreLease(location, ttl=2), StoreLease(location, ttl=2)
    seen_a, seen_b = location.head(LEASE_NAME), location.head(LEASE_NAME)  # both find it expired
    assert seen_a.etag == seen_b.etag and a._server_age(seen_a) > 2
    a._head = location.swap(LEASE_NAME, a._body(), seen_a)  # a swaps first
    with pytest.raises(ObjectPreconditionError):
        location.swap(LEASE_NAME, b._body(), seen_b)  # b's swap is refused by the server
    assert json.loads(location.get(LEASE_NAME))["token"] == a.token


def test_a_commit_without_the_lease_is_refused_and_leaves_no_manifest(s3):
    uri = s3("lost")
    writer, shards = _writer(uri, lease_seconds=2)
    infos = [writer.shard_writer().write(j, shards[j]) for j in range(3)]
    _die(writer._exclusive)  # cut off: no renewals
    time.sleep(3.5)
    taker = StoreLease(ObjectStorage(uri), ttl=2).__enter__()
    with pytest.raises(LeaseLostError):
        _commit(writer, infos)
    taker.__exit__(None, None, None)
    with pytest.raises(StoreNotFoundError):
        read_manifest(uri)


def test_a_server_that_does_not_answer_is_a_clear_error_naming_the_endpoint(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("LOGITSTORE_OBJECT_RETRY_SECONDS", "1")
    start = time.monotonic()
    with pytest.raises(StoreUnreachableError, match=r"at http://127.0.0.1:9 did not answer.*AWS_ENDPOINT_URL"):
        read_manifest("s3://logitstore-test/nowhere-" + str(os.getpid()))
    assert time.monotonic() - start < 30


def test_a_missing_store_and_a_foreign_prefix_are_named(s3):
    uri = s3("missing")
    with pytest.raises(StoreNotFoundError, match=f"no store at {uri}"):
        StoreReader(uri)
    ObjectStorage(uri).put("notes.txt", b"not a store")
    with pytest.raises(logitstore.errors.StoreExistsError, match="not a store"):
        StoreWriter(uri).__enter__()


def test_errors_of_the_object_store_name_their_cause(s3, monkeypatch):
    """A missing bucket, an invalid URI and an http:// endpoint the client refuses are each one line
    that names the cause (they all read "did not answer" before)."""
    with pytest.raises(ObjectStoreRefusedError, match="bucket no-such-bucket does not exist at http://127"):
        StoreReader("s3://no-such-bucket/store")
    with pytest.raises(ObjectStoreRefusedError, match="bucket no-such-bucket does not exist"):
        StoreWriter("s3://no-such-bucket/store").__enter__()
    for bad in ("s3://logitstore-test/a//b", "s3://logitstore-test/a/../b", "s3:///nobucket"):
        with pytest.raises(ObjectStoreRefusedError, match="not a valid object-storage URI"):
            StoreReader(bad)
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(ObjectStoreRefusedError, match="plain http://: set AWS_ALLOW_HTTP=true"):
        StoreReader(s3("http"))


def test_access_denied_is_named(s3, monkeypatch):
    """moto checks credentials once told to (its /moto-api/reset-auth): a user without a policy."""
    import urllib.request

    import boto3

    iam = boto3.client("iam")
    user = f"nobody-{os.getpid()}-{time.monotonic_ns()}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]

    def reset_auth(count: str) -> None:
        request = urllib.request.Request(
            f"{os.environ['AWS_ENDPOINT_URL']}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request).read()

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    reset_auth("0")
    try:
        with pytest.raises(ObjectStoreRefusedError, match="access denied to .*AccessDenied.*check the credentials"):
            StoreWriter(s3("denied")).__enter__()
    finally:
        reset_auth("inf")  # moto's setting is the whole server's


def test_a_holder_killed_on_this_machine_is_taken_over_at_once(s3):
    """The lease records its holder's host, boot and process: a rerun on that machine sees the
    process is gone and takes the lease without waiting it out."""
    import signal
    import subprocess
    import sys

    uri = s3("killed")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from logitstore.storage import open_storage; "
            f"open_storage({uri!r}).exclusive(lease_seconds=60).__enter__(); "
            "print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid} on "):
            StoreLease(ObjectStorage(uri), ttl=60).__enter__()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    start = time.monotonic()
    taker = StoreLease(ObjectStorage(uri), ttl=60).__enter__()
    assert time.monotonic() - start < 5  # not the 60 s of the lease
    taker.__exit__(None, None, None)


def test_a_writer_that_lost_its_lease_writes_no_more_shards_nor_shared_files(s3):
    uri = s3("cutoff")
    writer, shards = _writer(uri, lease_seconds=2)
    first = writer.shard_writer().write(0, shards[0])
    tasks = writer.shard_writer()  # what a writing task in another process holds
    _die(writer._exclusive)  # cut off: no renewals
    time.sleep(3.5)
    taker = StoreLease(ObjectStorage(uri), ttl=2).__enter__()
    before = set(ObjectStorage(uri).list("shards/"))
    with pytest.raises(LeaseLostError, match="no longer this dump's"):
        tasks.write(1, shards[1])
    with pytest.raises(LeaseLostError):
        writer.save_tokenizer('{"model": {}}', "bytes", 256)
    assert set(ObjectStorage(uri).list("shards/")) == before and first.name in before
    assert ObjectStorage(uri).size("tokenizer.json") is None
    taker.__exit__(None, None, None)


def test_a_holder_that_cannot_renew_for_the_whole_lease_counts_it_lost(monkeypatch):
    """Renewals run on a deadline: when the object store stays away for the lease's length, the
    holder cannot know whether another writer took it, and stops (it never commits)."""
    import boto3
    from helpers import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket=f"away-{port}")
    lease = StoreLease(ObjectStorage(f"s3://away-{port}/store"), ttl=2).__enter__()
    server.stop()
    time.sleep(3)
    with pytest.raises(LeaseLostError, match="could not be renewed for 2 s"):
        lease.check()
    lease.__exit__(None, None, None)


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "1e9"])
def test_a_lease_length_that_is_no_length_is_refused(monkeypatch, value):
    from logitstore.storage import settings

    monkeypatch.setenv("LOGITSTORE_LEASE_SECONDS", value)
    problems = settings.problems()
    assert len(problems) == 1 and f"LOGITSTORE_LEASE_SECONDS={value!r}" in problems[0] and len(problems[0]) < 250
    with pytest.raises(logitstore.errors.StoreError, match="LOGITSTORE_LEASE_SECONDS"):
        StoreWriter("memory://settings/store").__enter__()
