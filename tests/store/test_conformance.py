"""Both backends pass the store contract of logitstore.testing (a new backend adds one class here)."""

import numpy as np

from logitstore.testing import CODECS, BackendTests, StoreTests, random_shard


class TestZarr(BackendTests, StoreTests):
    backend = "zarr"


class TestArrow(BackendTests, StoreTests):
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
