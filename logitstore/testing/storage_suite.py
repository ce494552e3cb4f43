"""The storage contract (logitstore/storage/base.py) as a pytest class: a storage passes when a
subclass that provides it passes.

    class TestMyStorage(StorageTests):
        @pytest.fixture
        def storage(self):
            return open_storage("mine://bucket/prefix")   # fresh and empty for each test
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from logitstore.errors import StoreError, StoreLockedError
from logitstore.storage import Candidate, ObjectExistsError, Storage, open_storage


class _Info:
    """What a writer describes a shard write with (the store's ShardInfo, in miniature)."""

    def __init__(self, name: str, sha256: str, num_bytes: int) -> None:
        self.name, self.sha256, self.num_bytes = name, sha256, num_bytes

    def to_json(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "num_bytes": self.num_bytes}


def _shard(one_object: bool) -> dict[str, bytes]:
    return {"": b"one object of a shard"} if one_object else {"zarr.json": b"{}", "a/c/0": b"chunk bytes"}


class StorageTests:
    @pytest.fixture
    def storage(self, tmp_path) -> Storage:
        """A fresh, empty storage (a local directory here; a subclass overrides this fixture)."""
        return open_storage(tmp_path / "root")

    def test_put_get_size_and_replace(self, storage):
        storage.put("a.json", b"first")
        storage.put("deep/er/b.bin", bytes(range(256)) * 300)
        assert storage.get("a.json") == b"first" and storage.size("a.json") == 5
        assert storage.get("deep/er/b.bin") == bytes(range(256)) * 300
        storage.put("a.json", b"second, longer")
        assert storage.get("a.json") == b"second, longer" and storage.size("a.json") == 14
        with pytest.raises(FileNotFoundError):
            storage.get("missing.json")
        assert storage.size("missing.json") is None and storage.size("deep") is None
        pieces: list[bytes] = []
        storage.read_into("deep/er/b.bin", pieces.append)
        assert b"".join(pieces) == bytes(range(256)) * 300
        assert storage.get_many(["a.json", "deep/er/b.bin"])["a.json"] == b"second, longer"

    def test_listing_existence_and_deleting(self, storage):
        assert storage.top_level() == set() and storage.list() == {}
        storage.put_many({"x/1": b"1", "x/y/2": b"22", "z": b"333"})
        assert storage.list() == {"x/1": 1, "x/y/2": 2, "z": 3}
        assert storage.list("x/") == {"x/1": 1, "x/y/2": 2}
        assert storage.top_level() == {"x", "z"}
        assert storage.exists("x") and storage.exists("x/y") and storage.exists("z") and not storage.exists("w")
        before = storage.list_versions("x/")["x/1"]
        storage.put("x/1", b"9")
        assert storage.list_versions("x/")["x/1"] != before or storage.get("x/1") == b"9"
        storage.delete("z")
        storage.delete("z")  # nothing there: nothing to do
        storage.delete_tree("x")
        assert storage.list() == {}

    def test_create_is_create_only_and_a_repeat_of_the_same_bytes_succeeds(self, storage):
        storage.create("manifest.json", b"ours")
        storage.create("manifest.json", b"ours")  # a retried write whose first reply was lost
        with pytest.raises(ObjectExistsError):
            storage.create("manifest.json", b"theirs")
        assert storage.get("manifest.json") == b"ours"

    @pytest.mark.parametrize("name", ["../escape", "/absolute", "a//b", "a/./b", "a/../../b", ""])
    def test_names_never_leave_the_root(self, storage, name):
        with pytest.raises(StoreError, match="not a valid name"):
            storage.put(name, b"x")
        with pytest.raises(StoreError, match="not a valid name"):
            storage.get(name)

    def test_a_shard_write_appears_whole_is_found_again_and_leftovers_are_discarded(self, storage):
        infos = [storage.write_shard(j, "zarr", _shard, _Info, None) for j in (0, 1)]
        again = storage.write_shard(1, "zarr", _shard, _Info, None)  # a retried task
        for info in [*infos, again]:
            files = storage.shard_files(info.name)
            assert files in (_shard(True), _shard(False))
        found = storage.shard_candidates(3, "zarr")
        assert sorted(found) == [0, 1] and all(isinstance(c, Candidate) for cs in found.values() for c in cs)
        for candidate in found[1]:
            assert candidate.marker is None or candidate.marker == {
                "name": candidate.name,
                "sha256": candidate.marker["sha256"],
                "num_bytes": candidate.marker["num_bytes"],
            }
        storage.discard_shards({infos[0].name, again.name})
        names = {c.name for cs in storage.shard_candidates(3, "zarr").values() for c in cs}
        assert names == {infos[0].name, again.name}
        storage.discard_shards(set())
        assert storage.shard_candidates(3, "zarr") == {}
        with pytest.raises(FileNotFoundError):
            storage.shard_files(infos[0].name)

    def test_a_guard_that_fails_stops_the_write(self, storage):
        class Lost:
            def check(self) -> None:
                raise StoreError("lost")

        with pytest.raises(StoreError, match="lost"):
            storage.write_shard(0, "arrow", _shard, _Info, Lost())
        assert storage.shard_candidates(1, "arrow") == {}

    def test_exclusive_access_refuses_a_second_writer_until_released(self, storage):
        first = storage.exclusive(lease_seconds=30)
        with first:
            first.check()
            first.confirm()
            with pytest.raises(StoreLockedError):
                storage.exclusive(lease_seconds=30).__enter__()
            guard = first.guard()
            if guard is not None:
                pickle.loads(pickle.dumps(guard)).check()  # from a writing task's process
        with storage.exclusive(lease_seconds=30) as second:
            second.confirm()

    def test_a_storage_is_picklable_and_opens_the_same_root(self, storage):
        storage.put("k", b"v")
        assert pickle.loads(pickle.dumps(storage)).get("k") == b"v"
        assert open_storage(storage.uri).get("k") == b"v"

    def test_download_streams_to_a_local_file(self, storage, tmp_path: Path):
        storage.put("w/model.bin", b"w" * 100_000)
        storage.download_many({"w/model.bin": tmp_path / "copy" / "model.bin"})
        assert (tmp_path / "copy" / "model.bin").read_bytes() == b"w" * 100_000
        assert json.loads(json.dumps(storage.uri)) == storage.uri
