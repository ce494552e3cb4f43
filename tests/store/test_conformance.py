"""Both backends pass the store contract of logitstore.testing on every storage: a local directory,
object storage held in memory, and a real S3-compatible server on 127.0.0.1 (a new backend or
storage adds its classes here)."""

import uuid

import numpy as np
import pytest

from logitstore.testing import CODECS, random_shard
from logitstore.testing.suites import BackendTests, StoreTests


class TestZarr(BackendTests, StoreTests):
    backend = "zarr"


class TestArrow(BackendTests, StoreTests):
    backend = "arrow"


class InMemory:
    @pytest.fixture
    def where(self):
        prefix = f"memory://conformance-{uuid.uuid4().hex[:8]}"
        return lambda name: f"{prefix}/{name}"


class OnS3:
    @pytest.fixture
    def where(self, s3):
        prefix = s3("conformance")
        return lambda name: f"{prefix}/{name}"


class TestZarrInMemory(InMemory, StoreTests):
    backend = "zarr"


class TestArrowInMemory(InMemory, StoreTests):
    backend = "arrow"


class TestZarrOnS3(OnS3, StoreTests):
    backend = "zarr"


class TestArrowOnS3(OnS3, StoreTests):
    backend = "arrow"


def test_a_zipped_zarr_shard_is_a_zarr_group_that_zarrs_own_zip_store_opens(tmp_path):
    """Format version 8: a Zarr shard on object storage is its group's files in a ZIP of stored
    members, so a user's plain zarr (ZipStore) reads what our reader reads."""
    import zipfile

    import zarr
    from zarr.storage import ZipStore

    from logitstore.backends.zarr import ZarrBackend

    data = random_shard(np.random.default_rng(0), np.arange(5), 4, 10)
    arrays = CODECS["plain"].encode(data)
    (tmp_path / "shard.zarr.zip").write_bytes(ZarrBackend().encode_object(arrays))
    with zipfile.ZipFile(tmp_path / "shard.zarr.zip") as archive:
        assert {m.compress_type for m in archive.infolist()} == {zipfile.ZIP_STORED}
        assert "zarr.json" in archive.namelist()
    group = zarr.open_group(ZipStore(tmp_path / "shard.zarr.zip", mode="r"), mode="r")
    theirs = {name: np.asarray(array[...]) for name, array in group.arrays()}
    ours = ZarrBackend().read(str(tmp_path / "shard.zarr.zip"))
    assert sorted(theirs) == sorted(ours)
    for name, array in ours.items():
        assert theirs[name].dtype == array.dtype and np.array_equal(theirs[name], array), name
