"""The store contract as pytest classes (the pattern of zarr-python's StoreTests).

A backend passes when a subclass that names it passes, and so does a storage:

    class TestMyBackend(BackendTests, StoreTests):
        backend = "mine"

    class TestArrowOnMyStorage(StoreTests):
        backend = "arrow"

        @pytest.fixture
        def where(self):
            return lambda name: f"mine://bucket/{name}"

`BackendTests` checks one shard's round trip through the backend under every codec (real files in
pytest's `tmp_path`); `StoreTests` checks whole stores on the storage `where` gives (a local
directory by default): streaming, lookup by id, checksums, the writer's commit, resume and
exclusive-access rules, every damage made through the storage's own API. The storage contract
itself is logitstore/testing/storage_suite.py. Needs pytest (a test dependency only).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from logitstore.codec import Codec
from logitstore.errors import (
    ManifestError,
    ShardCorruptError,
    ShardDataError,
    StoreConflictError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
)
from logitstore.features import dequantize, projections
from logitstore.layout import FEATURE_FILE, index_dtype_for
from logitstore.manifest import names_version, parse_manifest, read_manifest
from logitstore.planning import plan_shards
from logitstore.reader import StoreReader
from logitstore.shard import ShardData, TokenInputs, head_mask, pad_width, with_canonical_padding
from logitstore.storage import open_storage
from logitstore.testing.builders import (
    CODECS,
    TEST_FEATURES,
    TEST_TEACHER,
    assert_same_content,
    build_store,
    dataset_record,
    layout_for,
    random_shard,
    round_trip,
    with_extras,
    with_features,
    with_samples,
    with_tokens,
    with_top_p,
)
from logitstore.writer import StoreWriter


class BackendTests:
    """One shard through a backend and back, under every codec."""

    backend: str = ""

    @pytest.fixture(params=list(CODECS))
    def codec(self, request) -> Codec:
        return CODECS[request.param]

    def test_round_trip_is_exact(self, tmp_path, codec):
        rng = np.random.default_rng(1)
        for vocab in (10, 70_000):  # uint16 and uint32 indices
            data = random_shard(rng, [3, 5, 9], k=5, vocab=vocab)
            back = round_trip(self.backend, codec, tmp_path / f"s{vocab}", data)
            assert_same_content(back, data, codec)
            assert back.topk_index.dtype == np.dtype(index_dtype_for(vocab))
            if codec.is_default:
                assert back.equals(data)

    def test_variable_positions_round_trip(self, tmp_path, codec):
        rng = np.random.default_rng(2)
        data = random_shard(rng, [0, 1, 2, 3], k=3, vocab=50, positions_per_sample=np.array([1, 0, 5, 3]))
        back = round_trip(self.backend, codec, tmp_path / "s", data)
        assert_same_content(back, data, codec)
        assert back.num_positions == 9

    def test_sampled_shards_round_trip(self, tmp_path, codec):
        rng = np.random.default_rng(5)
        data = with_samples(
            rng, random_shard(rng, [4, 8, 9], k=2, vocab=300, positions_per_sample=np.array([2, 0, 3])), 300, 6
        )
        data.validate(layout_for(self.backend, k=2, vocab=300, draws=6), reading=False)
        back = round_trip(self.backend, codec, tmp_path / "s", data)
        assert_same_content(back, data, codec)
        assert (
            back.extras["sample_count"].dtype == np.uint16
            and (back.extras["sample_count"].astype(int).sum(axis=1) == 6).all()
        )

    def test_view_seeds_round_trip(self, tmp_path, codec):
        rng = np.random.default_rng(6)
        data = random_shard(rng, [1, 2], k=3, vocab=20, positions_per_sample=np.array([4, 4]))
        data = with_extras(data, view_seed=rng.integers(-(2**63), 2**63 - 1, size=8, dtype=np.int64))
        data.validate(layout_for(self.backend, k=3, vocab=20, views=4), reading=False)
        assert_same_content(round_trip(self.backend, codec, tmp_path / "s", data), data, codec)

    def test_token_inputs_round_trip(self, tmp_path, codec):
        rng = np.random.default_rng(7)
        for vocab in (300, 70_000):
            data = random_shard(rng, [2, 6, 7], k=3, vocab=vocab, positions_per_sample=np.array([3, 0, 5]))
            data = with_tokens(rng, data, vocab, seq_len=9)
            data.validate(layout_for(self.backend, k=3, vocab=vocab, seq_len=9), reading=False)
            assert_same_content(round_trip(self.backend, codec, tmp_path / f"s{vocab}", data), data, codec)

    def test_features_round_trip(self, tmp_path, codec):
        rng = np.random.default_rng(9)
        data = random_shard(rng, [3, 5, 8], k=3, vocab=50, positions_per_sample=np.array([2, 0, 4]))
        data = with_features(rng, data, TEST_FEATURES)
        layout = layout_for(self.backend, k=3, vocab=50, features=TEST_FEATURES)
        data.validate(layout, reading=False)
        back = round_trip(self.backend, codec, tmp_path / "s", data)
        assert_same_content(back, data, codec)
        for name in ("feature_code", "feature_scale"):
            assert back.extras[name].dtype == data.extras[name].dtype
            assert np.array_equal(back.extras[name], data.extras[name])

    def test_adaptive_heads_round_trip_packed(self, tmp_path, codec):
        rng = np.random.default_rng(8)
        for vocab in (300, 70_000):
            data = random_shard(rng, [1, 4, 6, 8], k=9, vocab=vocab, positions_per_sample=np.array([3, 0, 6, 2]))
            data = with_top_p(data, 0.3)
            counts = data.extras["topk_count"]
            assert 1 <= counts.min() < counts.max() <= 9  # the heads do differ in size
            data.validate(layout_for(self.backend, k=9, vocab=vocab, top_p=0.3), reading=False)
            arrays = codec.encode(data)
            assert arrays["topk_code" if not codec.lossless else "topk_logit"].shape == (int(counts.sum()),)
            back = round_trip(self.backend, codec, tmp_path / f"s{vocab}", data)
            assert_same_content(back, data, codec)
            back.validate(layout_for(self.backend, k=9, vocab=vocab, top_p=0.3, codec=codec))
            assert back.top_k == int(counts.max())  # as wide as the widest head, not top_k
            pad = ~head_mask(counts, back.top_k)  # padding: the top-1's id and the smallest stored logit
            assert np.array_equal(back.topk_index[pad], np.broadcast_to(back.topk_index[:, :1], pad.shape)[pad])


class StoreTests:
    """Whole stores on one storage: the reader, checksums, and the writer's commit, resume and
    exclusive-access rules."""

    backend: str = ""

    @pytest.fixture
    def where(self, tmp_path):
        """where(name) -> the location of a fresh store called `name` (a local directory here;
        a subclass on other storage overrides this fixture)."""
        return lambda name: str(tmp_path / name)

    @pytest.fixture(params=list(CODECS))
    def codec(self, request) -> Codec:
        return CODECS[request.param]

    def test_store_streams_and_looks_up_by_id(self, where, codec):
        ids = np.arange(100, 130) * 3
        shards = build_store(where("st"), self.backend, ids, codec=codec)
        reader = StoreReader(where("st"))
        assert reader.num_shards == 5 and reader.manifest.num_samples == 30
        content = 1 if codec.is_default else 3  # the version the content needs; shard names may need more
        assert reader.manifest.format_version == max(content, names_version(reader.manifest.shards))
        streamed = [d for _, d in reader.iter_shards()]
        for got, want in zip(streamed, shards):
            assert_same_content(got, want, codec)
        query = np.array([ids[29], ids[0], ids[8], ids[7]])
        got = reader.lookup(query)
        assert got.sample_id.tolist() == query.tolist()
        expected = ShardData.concat(
            [streamed[4].select([1]), streamed[0].select([0]), streamed[1].select([1]), streamed[1].select([0])]
        )
        assert got.equals(
            ShardData(
                query,
                expected.position_offsets,
                expected.topk_index,
                expected.topk_logit,
                expected.logsumexp,
                expected.extras,
                expected.ordered,
            )
        )
        with pytest.raises(KeyError):
            reader.lookup(np.array([ids[0] + 1]))

    def test_sampled_store_is_version_2_and_lookup_pads_the_sample_width(self, where):
        shards = build_store(where("st"), self.backend, np.arange(20), draws=6, vocab=8, shard_size=2)
        reader = StoreReader(where("st"))
        assert reader.manifest.format_version == max(2, names_version(reader.manifest.shards))
        assert reader.manifest.draws == 6
        widths = [s.extras["sample_index"].shape[1] for s in shards]
        assert len(set(widths)) > 1 and max(widths) <= 6  # shards keep only the columns they need
        for ids in (np.array([13, 2, 7]), np.arange(20)[::-1]):
            got = reader.lookup(ids)
            width = got.extras["sample_index"].shape[1]
            for row, i in enumerate(ids):
                count = pad_width(shards[i // 2].extras["sample_count"][i % 2][None], width)[0]
                index = pad_width(shards[i // 2].extras["sample_index"][i % 2][None], width)[0]
                np.testing.assert_array_equal(got.extras["sample_count"][row], count)
                np.testing.assert_array_equal(got.extras["sample_index"][row][count > 0], index[count > 0])
        assert reader.verify() == []

    def test_a_store_that_carries_its_inputs_is_version_5_and_lookup_keeps_each_samples_tokens(self, where):
        lengths = np.array([3, 0, 1, 6, 2, 2, 5, 1, 4, 3])
        shards = build_store(where("st"), self.backend, np.arange(10), lengths=lengths, shard_size=4, seq_len=8)
        reader = StoreReader(where("st"))
        assert reader.manifest.format_version == max(5, names_version(reader.manifest.shards))
        assert reader.manifest.layout.inputs.seq_len == 8
        got = reader.lookup(np.array([9, 0, 5]))
        for row, i in enumerate((9, 0, 5)):
            want_ids, want_mask = shards[i // 4].tokens.sample(i % 4)
            ids, mask = got.tokens.sample(row)
            assert np.array_equal(ids, want_ids) and np.array_equal(mask, want_mask)
            assert int(mask.sum()) == lengths[i] == got.position_offsets[row + 1] - got.position_offsets[row]
        assert reader.verify() == []
        # A mask that disagrees with the positions breaks the format.
        bad = shards[0].tokens
        flipped = TokenInputs(bad.offsets, bad.input_ids, 1 - bad.loss_mask)
        broken = ShardData(
            *(getattr(shards[0], f) for f in ("sample_id", "position_offsets", "topk_index")),
            shards[0].topk_logit,
            shards[0].logsumexp,
            tokens=flipped,
        )
        with pytest.raises(ShardDataError, match="loss_mask"):
            broken.validate(reader.manifest.layout)

    def test_an_adaptive_store_is_version_6_and_lookup_pads_each_head(self, where):
        shards = build_store(where("st"), self.backend, np.arange(12), k=6, vocab=40, shard_size=5, top_p=0.5)
        reader = StoreReader(where("st"))
        assert reader.manifest.format_version == max(6, names_version(reader.manifest.shards))
        assert reader.manifest.layout.selection.to_json() == {"kind": "topk", "top_p": 0.5, "min_k": 1}
        got = reader.lookup(np.array([11, 0, 6]))
        # As wide as the widest head of the shards read (each shard decodes to its own widest head).
        assert got.top_k == max(int(shards[j].extras["topk_count"].max()) for j in (2, 0, 1)) <= 6
        for row, i in enumerate((11, 0, 6)):
            shard = with_canonical_padding(shards[i // 5])
            count = int(shard.extras["topk_count"][i % 5])
            assert got.extras["topk_count"][row] == count
            assert np.array_equal(got.topk_index[row, :count], shard.topk_index[i % 5, :count])
            # padding as FORMAT.md says
            assert np.array_equal(got.topk_index[row], shard.topk_index[i % 5, : got.top_k])
            assert np.array_equal(got.topk_logit[row], shard.topk_logit[i % 5, : got.top_k])
        assert reader.verify() == []

    def test_a_store_with_features_is_version_9_and_its_projection_is_checked(self, where):
        shards = build_store(where("st"), self.backend, np.arange(9), lengths=np.arange(9) % 4, shard_size=4,
                             features=TEST_FEATURES)  # fmt: skip
        reader = StoreReader(where("st"))
        assert reader.manifest.format_version == 9 and reader.manifest.layout.features.count == 2
        matrices = reader.feature_projection()
        assert [m.shape for m in matrices] == [(12, 5), (9, 5)]
        for m, want in zip(matrices, projections(TEST_FEATURES)):
            assert np.array_equal(m, want)
            np.testing.assert_allclose(m.T @ m, np.eye(5), atol=1e-6)  # orthonormal columns
        got = reader.lookup(np.array([7, 1]))
        for row, i in enumerate((7, 1)):
            rows = got.positions_of(row)
            want = shards[i // 4].extras["feature_code"][shards[i // 4].positions_of(i % 4)]
            assert np.array_equal(got.extras["feature_code"][rows], want)
        y = dequantize(got.extras["feature_code"], got.extras["feature_scale"])
        assert y.shape == (got.num_positions, 10)
        assert reader.verify() == []
        # The projection is the store's: a changed byte is found before anything uses it.
        storage = open_storage(where("st"))
        data = bytearray(storage.get(FEATURE_FILE))
        data[5] ^= 1
        storage.put(FEATURE_FILE, bytes(data))
        with pytest.raises(ShardCorruptError, match="feature_projection.bin"):
            StoreReader(where("st")).feature_projection()
        assert any(FEATURE_FILE in p for p in StoreReader(where("st")).verify())

    def test_reader_memory_is_bounded_by_its_cache(self, where):
        build_store(where("st"), self.backend, np.arange(50), shard_size=5)
        reader = StoreReader(where("st"), cache_shards=2)
        for _ in reader.iter_shards():
            assert len(reader._cache) <= 2

    def test_an_incomplete_store_is_refused(self, where):
        build_store(where("st"), self.backend, np.arange(10))
        open_storage(where("st")).delete("manifest.json")
        with pytest.raises(StoreNotFoundError, match="no complete store"):
            StoreReader(where("st"))

    def test_any_flipped_byte_or_truncation_is_detected_by_verify_and_the_reader(self, where):
        """One byte flipped at 80 random positions of random files of the shards (data and metadata
        alike), and truncations: each is reported by verify() naming that one shard; the reader
        refuses it."""
        build_store(where("st"), self.backend, np.arange(40), shard_size=10)
        storage = open_storage(where("st"))
        shards = read_manifest(storage).shards
        files = sorted(
            n for n in storage.list("shards/") if any(n == s.name or n.startswith(s.name + "/") for s in shards)
        )
        rng = np.random.default_rng(0)
        for trial in range(100):
            victim = files[rng.integers(len(files))]
            original = storage.get(victim)
            damaged = bytearray(original)
            if trial < 80:
                damaged[int(rng.integers(len(damaged)))] ^= int(rng.integers(1, 256))
            else:
                damaged = damaged[: int(rng.integers(len(damaged)))]
            storage.put(victim, bytes(damaged))
            bad = int(victim.split("/")[1].split(".")[0])
            reader = StoreReader(where("st"))
            problems = reader.verify()
            assert len(problems) == 1 and f"shards/{bad:05d}" in problems[0], (trial, victim, problems)
            with pytest.raises(ShardCorruptError, match=f"shards/{bad:05d}"):
                reader.read_shard(bad)
            storage.put(victim, original)
        assert StoreReader(where("st")).verify() == []

    def test_the_writer_rejects_bad_shards_and_writes_nothing(self, where):
        rng = np.random.default_rng(3)
        good = random_shard(rng, [1, 2, 3], k=3, vocab=10)
        nan = good.topk_logit.copy()
        nan[1, 0] = np.nan
        bad_cases = {
            "NaN": ShardData(good.sample_id, good.position_offsets, good.topk_index, nan, good.logsumexp),
            "increasing": ShardData(
                good.sample_id[::-1].copy(), good.position_offsets, good.topk_index, good.topk_logit, good.logsumexp
            ),
            "descending": ShardData(
                good.sample_id, good.position_offsets, good.topk_index, good.topk_logit[:, ::-1].copy(), good.logsumexp
            ),
            "no place for it": with_extras(good, view_seed=np.zeros(3, np.int64)),
            "sample_index is required": good,
        }
        for needle, data in bad_cases.items():
            draws = 4 if needle == "sample_index is required" else 0
            with StoreWriter(where(needle.replace(" ", "-"))) as writer:
                writer.start(
                    layout_for(self.backend, k=3, draws=draws), plan_shards(np.array([1, 2, 3]), 7), {}, overwrite=False
                )
                with pytest.raises(ShardDataError, match=needle):
                    writer.shard_writer().write(0, data)
            assert open_storage(where(needle.replace(" ", "-"))).list("shards/") == {}

    def test_a_complete_store_is_kept_a_rerun_is_finished_and_other_content_is_refused(self, where):
        build_store(where("st"), self.backend, np.arange(10), seed=3)
        storage = open_storage(where("st"))
        before = storage.get("manifest.json")
        layout, plan = layout_for(self.backend), plan_shards(np.arange(10), 7)
        with StoreWriter(where("st")) as writer:
            writer.start(layout, plan, {"test": 3}, overwrite=False)
            assert writer.finished is not None and writer.finished.num_samples == 10
        with StoreWriter(where("st")) as writer, pytest.raises(StoreExistsError, match="already exists") as refused:
            writer.start(layout, plan, {"test": 4}, overwrite=False)
        assert refused.value.remedy == "overwrite"
        assert storage.get("manifest.json") == before
        assert StoreReader(where("st")).verify() == []

    def test_an_unfinished_store_resumes_with_its_sound_shards_only(self, where):
        rng = np.random.default_rng(8)
        ids, layout = np.arange(21), layout_for(self.backend)
        plan = plan_shards(ids, 7)
        with StoreWriter(where("st")) as writer:  # a dump that dies after two of three shards
            writer.start(layout, plan, {"dump": 1}, overwrite=False)
            written = [writer.shard_writer().write(j, random_shard(rng, ids[7 * j : 7 * j + 7], 4, 10)) for j in (0, 1)]
        storage = open_storage(where("st"))
        damaged = sorted(n for n in storage.list("shards/") if n.startswith(written[1].name))[0]
        storage.put(damaged, storage.get(damaged)[:-3])
        with StoreWriter(where("st")) as writer, pytest.raises(StoreConflictError, match="differ in: dump"):
            writer.start(layout, plan, {"dump": 2}, overwrite=False)
        with StoreWriter(where("st")) as writer:
            writer.start(layout, plan, {"dump": 1}, overwrite=False)
            assert sorted(writer.resumed) == [0]  # shard 1 was damaged: written again
            infos = [*writer.resumed.values()]
            infos += [writer.shard_writer().write(j, random_shard(rng, ids[7 * j : 7 * j + 7], 4, 10)) for j in (1, 2)]
            manifest = writer.commit(infos, teacher=TEST_TEACHER, dataset=dataset_record(ids, 8), config={})
        assert manifest.num_samples == 21 and StoreReader(where("st")).verify() == []
        assert storage.size(".pending.json") is None and not storage.exists(".tmp")
        named = {s.name for s in manifest.shards}  # nothing left of the damaged write
        assert all(
            any(n == s or n.startswith(s + "/") or n.endswith(".done") for s in named) for n in storage.list("shards/")
        )

    def test_a_second_writer_is_refused_while_the_first_holds_the_store(self, where):
        with StoreWriter(where("st")):
            with pytest.raises(StoreLockedError, match="another writer") as refused:
                StoreWriter(where("st")).__enter__()
            assert refused.value.remedy == "wait"
        with StoreWriter(where("st")):  # released on exit
            pass
        assert open_storage(where("st")).top_level() == set()  # nothing written: nothing left behind

    def test_the_manifest_rejects_hostile_newer_or_inconsistent_content(self, tmp_path):
        build_store(tmp_path / "st", self.backend, np.arange(10), draws=4)  # parsing is the same on any storage
        raw = json.loads((tmp_path / "st" / "manifest.json").read_text())
        cases = [
            ({"format_version": 99}, "newer"),
            ({"top_k": "5"}, "type"),
            (
                {"shards": [{**raw["shards"][0], "name": "../../etc/passwd"}] + raw["shards"][1:]},
                "not a valid shard name",
            ),
            ({"num_samples": 10**30}, "out of range"),
            ({"temperatures": []}, "temperatures"),
            ({"selection": {"kind": "magic"}}, "unknown"),
            ({"format_version": 1}, "version 1 declares"),
            ({"selection": {"kind": "sample", "draws": 0, "temperature": 1.0}}, "out of range"),
            ({"codec": {"index": "huffman", "values": "float32"}}, "index codec"),
            ({"codec": {"index": "delta", "values": "logq", "bits": 40}}, "bits"),
            ({"views": {"count": 2, "augment": "a", "seed": 0}}, "version 2 declares"),
        ]
        for change, needle in cases:
            with pytest.raises(ManifestError, match=needle):
                parse_manifest(json.dumps({**raw, **change}))
        with pytest.raises(ManifestError, match="not valid JSON"):
            parse_manifest(json.dumps(raw)[:-20])


def _of_shard(name: str, shard: str) -> bool:
    """Whether the file or object `name` is (part of) the shard written as `shard`."""
    return name == shard or name.startswith(shard + "/")
