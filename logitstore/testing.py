"""The store contract as pytest classes, for every backend (the pattern of zarr-python's StoreTests).

A backend passes when a subclass that names it passes:

    class TestMyBackend(BackendTests, StoreTests):
        backend = "mine"

`BackendTests` checks one shard's round trip through the backend under every codec; `StoreTests`
checks whole stores: streaming, lookup by id, checksums, the writer's commit, resume and lock
rules. Both use real files in pytest's `tmp_path`. Also here: helpers that make shards of real
top-k distributions (random logits, exact normalisers). Needs pytest (a test dependency only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from logitstore.backends import get_backend
from logitstore.checksum import files_checksum, shard_checksum
from logitstore.codec import Codec, Compander
from logitstore.errors import (
    ManifestError,
    ShardCorruptError,
    ShardDataError,
    StoreConflictError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
)
from logitstore.layout import Inputs, Selection, StoreLayout, Views, index_dtype_for
from logitstore.manifest import parse_manifest
from logitstore.planning import plan_shards
from logitstore.reader import StoreReader, topk_probabilities
from logitstore.shard import (
    ShardData,
    TokenInputs,
    adaptive_head_sizes,
    head_mask,
    pad_width,
    trim_samples,
    with_canonical_padding,
)
from logitstore.writer import StoreWriter, open_writer

TEMPS = (1.0, 2.0, 4.0)
CODECS = {
    "plain": Codec(),
    "delta": Codec.make("delta"),
    "logq": Codec.make("delta", "logq", 8, TEMPS),
    "plain-logq12": Codec.make("plain", "logq", 12, TEMPS),
}


# ---- shards of real top-k distributions ------------------------------------------------------------
def random_shard(rng, ids, k: int, vocab: int, positions_per_sample=None) -> ShardData:
    """Real top-k and logsumexp of random logits; variable positions per sample when asked."""
    n = len(ids)
    lengths = positions_per_sample if positions_per_sample is not None else np.ones(n, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    z = rng.normal(size=(int(offsets[-1]), vocab)).astype(np.float32) * 3
    order = np.argsort(-z, axis=1, kind="stable")[:, :k]
    lse = np.stack([np.log(np.exp(z.astype(np.float64) / t).sum(axis=1)) for t in TEMPS], axis=1)
    return ShardData(
        sample_id=np.asarray(ids, dtype=np.int64),
        position_offsets=offsets,
        topk_index=order.astype(index_dtype_for(vocab)),
        topk_logit=np.take_along_axis(z, order, axis=1),
        logsumexp=lse.astype(np.float32),
    )


def with_extras(data: ShardData, **extras: np.ndarray) -> ShardData:
    return dataclasses.replace(data, extras={**data.extras, **extras})


def with_tokens(rng, data: ShardData, vocab: int, seq_len: int) -> ShardData:
    """Random token ids and a loss mask per sample, with as many ones as the sample has positions
    (the other tokens are context the teacher read but no position of which is stored)."""
    counts = np.diff(data.position_offsets)
    lengths = [int(rng.integers(max(int(c), 1), seq_len + 1)) for c in counts]
    masks = []
    for c, n in zip(counts, lengths):
        mask = np.zeros(n, dtype=np.uint8)
        mask[rng.choice(n, size=int(c), replace=False)] = 1
        masks.append(mask)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    input_ids = rng.integers(0, vocab, size=int(offsets[-1])).astype(index_dtype_for(vocab))
    tokens = TokenInputs(offsets, input_ids, np.concatenate(masks) if masks else np.zeros(0, np.uint8))
    return dataclasses.replace(data, tokens=tokens)


def with_top_p(data: ShardData, top_p: float, min_k: int = 1) -> ShardData:
    """An adaptive head: per position the fewest of its k classes whose mass at T = TEMPS[0] = 1
    reaches `top_p` (at least `min_k`), the other columns left as they are (a writer's input)."""
    p = np.exp(data.topk_logit.astype(np.float64) - data.logsumexp[:, :1].astype(np.float64))
    return with_extras(data, topk_count=adaptive_head_sizes(np.cumsum(p, axis=1), top_p, min_k).astype(np.uint16))


def with_samples(rng, data: ShardData, vocab: int, draws: int, trim: bool = False) -> ShardData:
    """`draws` multinomial draws per position as distinct ids with uint16 counts (only the columns
    the shard needs when `trim`, as the dump writes them)."""
    p = data.num_positions
    counts = (
        np.stack([np.bincount(rng.integers(0, vocab, size=draws), minlength=vocab) for _ in range(p)])
        if p
        else np.zeros((0, vocab), np.int64)
    )
    order = np.argsort(-counts, axis=1, kind="stable")[:, :draws]
    index, count = order.astype(index_dtype_for(vocab)), np.take_along_axis(counts, order, axis=1).astype(np.uint16)
    if trim:
        index, count = trim_samples(index, count)
    return with_extras(data, sample_index=index, sample_count=count)


def layout_for(
    backend: str,
    *,
    k: int = 4,
    vocab: int = 10,
    shard_size: int = 7,
    draws: int = 0,
    codec: Codec = CODECS["plain"],
    views: int = 0,
    seq_len: int = 0,
    top_p: float | None = None,
) -> StoreLayout:
    selection = Selection("hybrid", draws, 1.0, 0) if draws else Selection()
    if top_p is not None:
        selection = Selection(top_p=top_p, min_k=1)
    return StoreLayout(
        backend=backend,
        top_k=k,
        vocab_size=vocab,
        temperatures=TEMPS,
        shard_size=shard_size,
        selection=selection,
        codec=codec,
        views=Views(views, "test-augment", 0) if views else None,
        inputs=Inputs("tokens", seq_len) if seq_len else None,
    )


def build_store(
    root,
    backend: str,
    ids,
    k: int = 4,
    vocab: int = 10,
    shard_size: int = 7,
    lengths=None,
    seed: int = 0,
    draws: int = 0,
    codec: Codec = CODECS["plain"],
    seq_len: int = 0,
    top_p: float | None = None,
) -> list[ShardData]:
    """A complete store of random shards through the StoreWriter (carrying random tokens of at
    most `seq_len` when it is not 0; an adaptive head of mass `top_p` when given); -> the shards as
    written."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(ids, dtype=np.int64)
    layout = layout_for(
        backend, k=k, vocab=vocab, shard_size=shard_size, draws=draws, codec=codec, seq_len=seq_len, top_p=top_p
    )
    plan = plan_shards(ids, shard_size)
    shards, infos, start = [], [], 0
    with open_writer(root) as writer:  # a local path or an object-storage URI
        writer.start(layout, plan, {"test": seed}, overwrite=False)
        for j in range(plan.num_shards):
            n = int(plan.counts[j])
            data = random_shard(
                rng, ids[start : start + n], k, vocab, None if lengths is None else lengths[start : start + n]
            )
            if draws:
                data = with_samples(rng, data, vocab, draws, trim=True)
            if seq_len:
                data = with_tokens(rng, data, vocab, seq_len)
            if top_p is not None:
                data = with_top_p(data, top_p)
            start += n
            shards.append(data)
            infos.append(writer.shard_writer().write(j, data))
        writer.commit(infos, teacher=TEST_TEACHER, dataset=dataset_record(ids, seed), config={})
    return shards


TEST_TEACHER = {"spec": "random logits", "weights_sha256": hashlib.sha256(b"random logits").hexdigest()}


def dataset_record(ids: np.ndarray, seed: int) -> dict:
    """A dataset record as the dump writes one (the inputs' hash stands for the seed of the random logits)."""
    return {
        "spec": "random",
        "num_samples": int(len(ids)),
        "ids_sha256": hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest(),
        "inputs_sha256": hashlib.sha256(str(seed).encode()).hexdigest(),
    }


# ---- comparing content -------------------------------------------------------------------------------
def by_class(data: ShardData) -> tuple[np.ndarray, np.ndarray]:
    """Each row's (index, logit) sorted by class id: the content, whatever order a codec returns."""
    order = np.argsort(data.topk_index, axis=1, kind="stable")
    return np.take_along_axis(data.topk_index, order, axis=1), np.take_along_axis(data.topk_logit, order, axis=1)


def assert_same_content(got: ShardData, want: ShardData, codec: Codec) -> None:
    """`got` (read back through `codec`) holds `want`: exactly for lossless codecs; for logq within
    the quantizer's bound, with the exact tail mass. An adaptive head is compared on its stored
    entries (the reader pads the others as FORMAT.md says, to as many columns as the shard's
    widest head)."""
    want = with_canonical_padding(want)
    if "topk_count" in want.extras:
        count = want.extras["topk_count"]
        assert got.top_k == (max(1, int(count.max())) if count.size else 1)
        head = slice(0, got.top_k)
        want = dataclasses.replace(want, topk_index=want.topk_index[:, head], topk_logit=want.topk_logit[:, head])
    for name in ("sample_id", "position_offsets"):
        a, b = got.arrays()[name], want.arrays()[name]
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert got.logsumexp.dtype == np.float32
    if codec.lossless:
        assert np.array_equal(got.logsumexp, want.logsumexp)
    else:  # stored as the top-1's log-probability in float16
        np.testing.assert_allclose(got.logsumexp, want.logsumexp, rtol=1e-3, atol=1e-2)
    assert got.topk_index.dtype == want.topk_index.dtype
    for name, array in want.extras.items():  # sample arrays and view seeds are stored as they are
        assert np.array_equal(got.extras[name], array), name
    assert (got.tokens is None) == (want.tokens is None)
    if want.tokens is not None:  # so are the tokens
        for name, array in want.tokens.arrays().items():
            b = got.tokens.arrays()[name]
            assert b.dtype == array.dtype and np.array_equal(b, array), name
    got_index, got_logit = by_class(got)
    want_index, want_logit = by_class(want)
    assert np.array_equal(got_index, want_index)
    if got.num_positions:  # column 0 holds the teacher's top-1, exactly, with the largest logit
        assert np.all(got.topk_logit[:, :1] >= got.topk_logit)
        assert np.array_equal(got.topk_index[:, 0], want.topk_index[:, 0])
    if codec.lossless:
        assert "rest_mass" not in got.extras and np.array_equal(got_logit, want_logit)
        return
    comp = Compander(codec.t_min, codec.t_max, codec.bits)
    top1 = want.topk_logit[:, :1]
    f_true = comp.forward(top1 - want_logit)
    f_err = np.abs(comp.forward(top1 - got_logit) - f_true)
    # half a step, except in the last code (it also holds every larger gap) and for entries within
    # half a step of the top-1 (code 1 rather than the top-1's code 0): at most a step off
    bound = np.where((f_true < (comp.levels - 1.5) * comp.step) & (f_true >= comp.step / 2), comp.step / 2, comp.step)
    assert np.all(f_err <= bound * (1 + 1e-4) + 1e-6)
    z = want.topk_logit.astype(np.float64)
    if "topk_count" in want.extras:
        z = np.where(head_mask(want.extras["topk_count"], want.top_k), z, -np.inf)
    for r, t in enumerate(TEMPS):
        exact = 1 - np.exp(z / t - want.logsumexp[:, r : r + 1]).sum(axis=1)
        # log(rest) in float16: a relative error of at most 2^-11 |log rest|
        np.testing.assert_allclose(got.extras["rest_mass"][:, r], np.clip(exact, 0, 1), rtol=2e-2, atol=1e-7)


def mean_bucket_kl(exact: ShardData, stored: ShardData, r: int, t: float) -> float:
    """Mean over positions of KL(exact k+1 buckets || the buckets a trainer builds from `stored`)."""

    def buckets(d: ShardData) -> np.ndarray:
        order = np.argsort(d.topk_index, axis=1, kind="stable")
        logit = np.take_along_axis(d.topk_logit, order, axis=1)
        rest = d.extras.get("rest_mass")
        head, tail = topk_probabilities(logit, d.logsumexp[:, r], t, None if rest is None else rest[:, r])
        return np.concatenate([head, tail[:, None]], axis=1).astype(np.float64)

    p, q = buckets(exact), buckets(stored)
    logs = np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300))
    return float(np.mean(np.sum(np.where(p > 0, p * logs, 0), axis=1)))


def round_trip(backend: str, codec: Codec, path, data: ShardData) -> ShardData:
    """`data` written to `path` and read back; on the way, the backend's in-memory form must be the
    same files, byte for byte, and it and the one-object form (what goes to object storage) must
    decode to the same arrays."""
    arrays = codec.encode(data)
    get_backend(backend).write(str(path), arrays)
    from_disk = get_backend(backend).read(str(path))
    files = get_backend(backend).encode(arrays)
    assert files_checksum(files) == shard_checksum(path), "encode() differs from the files write() made"
    one = get_backend(backend).encode_object(arrays)  # a shard on object storage: one object
    assert one == get_backend(backend).encode_object(arrays), "encode_object() is not deterministic"
    for from_memory in (get_backend(backend).decode(files), get_backend(backend).decode({"": one})):
        assert sorted(from_memory) == sorted(from_disk)
        for name, array in from_disk.items():
            assert from_memory[name].dtype == array.dtype and np.array_equal(from_memory[name], array), name
    return codec.decode(from_disk, data.top_k)


# ---- the contract --------------------------------------------------------------------------------
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
    """Whole stores: the reader, checksums, and the writer's commit, resume and lock rules."""

    backend: str = ""

    @pytest.fixture(params=list(CODECS))
    def codec(self, request) -> Codec:
        return CODECS[request.param]

    def test_store_streams_and_looks_up_by_id(self, tmp_path, codec):
        ids = np.arange(100, 130) * 3
        shards = build_store(tmp_path / "st", self.backend, ids, codec=codec)
        reader = StoreReader(tmp_path / "st")
        assert reader.num_shards == 5 and reader.manifest.num_samples == 30
        assert reader.manifest.format_version == (1 if codec.is_default else 3)
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

    def test_sampled_store_is_version_2_and_lookup_pads_the_sample_width(self, tmp_path):
        shards = build_store(tmp_path / "st", self.backend, np.arange(20), draws=6, vocab=8, shard_size=2)
        reader = StoreReader(tmp_path / "st")
        assert reader.manifest.format_version == 2 and reader.manifest.draws == 6
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

    def test_a_store_that_carries_its_inputs_is_version_5_and_lookup_keeps_each_samples_tokens(self, tmp_path):
        lengths = np.array([3, 0, 1, 6, 2, 2, 5, 1, 4, 3])
        shards = build_store(tmp_path / "st", self.backend, np.arange(10), lengths=lengths, shard_size=4, seq_len=8)
        reader = StoreReader(tmp_path / "st")
        assert reader.manifest.format_version == 5 and reader.manifest.layout.inputs.seq_len == 8
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

    def test_an_adaptive_store_is_version_6_and_lookup_pads_each_head(self, tmp_path):
        shards = build_store(tmp_path / "st", self.backend, np.arange(12), k=6, vocab=40, shard_size=5, top_p=0.5)
        reader = StoreReader(tmp_path / "st")
        assert reader.manifest.format_version == 6 and reader.manifest.layout.selection.to_json() == {
            "kind": "topk",
            "top_p": 0.5,
            "min_k": 1,
        }
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

    def test_reader_memory_is_bounded_by_its_cache(self, tmp_path):
        build_store(tmp_path / "st", self.backend, np.arange(50), shard_size=5)
        reader = StoreReader(tmp_path / "st", cache_shards=2)
        for _ in reader.iter_shards():
            assert len(reader._cache) <= 2

    def test_an_incomplete_store_is_refused(self, tmp_path):
        build_store(tmp_path / "st", self.backend, np.arange(10))
        os.remove(tmp_path / "st" / "manifest.json")
        with pytest.raises(StoreNotFoundError, match="no complete store"):
            StoreReader(tmp_path / "st")

    def test_any_flipped_byte_or_truncation_is_detected_by_verify_and_the_reader(self, tmp_path):
        """One byte flipped at 80 random positions of random shard files (data and metadata alike),
        and truncations: each is reported by verify() naming that one shard; the reader refuses it."""
        build_store(tmp_path / "st", self.backend, np.arange(40), shard_size=10)
        rng = np.random.default_rng(0)
        files = sorted(p for p in (tmp_path / "st" / "shards").rglob("*") if p.is_file())
        for trial in range(100):
            victim = files[rng.integers(len(files))]
            original = victim.read_bytes()
            damaged = bytearray(original)
            if trial < 80:
                damaged[int(rng.integers(len(damaged)))] ^= int(rng.integers(1, 256))
            else:
                damaged = damaged[: int(rng.integers(len(damaged)))]
            victim.write_bytes(bytes(damaged))
            bad = int(victim.relative_to(tmp_path / "st" / "shards").parts[0].split(".")[0])
            reader = StoreReader(tmp_path / "st")
            problems = reader.verify()
            assert len(problems) == 1 and f"shards/{bad:05d}" in problems[0], (trial, victim, problems)
            with pytest.raises(ShardCorruptError, match=f"shards/{bad:05d}"):
                reader.read_shard(bad)
            victim.write_bytes(original)
        assert StoreReader(tmp_path / "st").verify() == []

    def test_the_writer_rejects_bad_shards_and_writes_nothing(self, tmp_path):
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
            with StoreWriter(tmp_path / needle) as writer:
                writer.start(
                    layout_for(self.backend, k=3, draws=draws), plan_shards(np.array([1, 2, 3]), 7), {}, overwrite=False
                )
                with pytest.raises(ShardDataError, match=needle):
                    writer.shard_writer().write(0, data)
            assert list((tmp_path / needle / "shards").iterdir()) == []

    def test_a_complete_store_is_kept_a_rerun_is_finished_and_other_content_is_refused(self, tmp_path):
        build_store(tmp_path / "st", self.backend, np.arange(10), seed=3)
        before = (tmp_path / "st" / "manifest.json").read_bytes()
        layout, plan = layout_for(self.backend), plan_shards(np.arange(10), 7)
        with StoreWriter(tmp_path / "st") as writer:
            writer.start(layout, plan, {"test": 3}, overwrite=False)
            assert writer.finished is not None and writer.finished.num_samples == 10
        with StoreWriter(tmp_path / "st") as writer, pytest.raises(StoreExistsError, match="--overwrite"):
            writer.start(layout, plan, {"test": 4}, overwrite=False)
        assert (tmp_path / "st" / "manifest.json").read_bytes() == before
        assert StoreReader(tmp_path / "st").verify() == []

    def test_an_unfinished_store_resumes_with_its_sound_shards_only(self, tmp_path):
        rng = np.random.default_rng(8)
        ids, layout = np.arange(21), layout_for(self.backend)
        plan = plan_shards(ids, 7)
        with StoreWriter(tmp_path / "st") as writer:  # a dump that dies after two of three shards
            writer.start(layout, plan, {"dump": 1}, overwrite=False)
            for j in range(2):
                writer.shard_writer().write(j, random_shard(rng, ids[7 * j : 7 * j + 7], 4, 10))
        damaged = next(p for p in sorted((tmp_path / "st" / "shards").rglob("*")) if p.is_file() and "00001" in str(p))
        damaged.write_bytes(damaged.read_bytes()[:-3])
        with StoreWriter(tmp_path / "st") as writer, pytest.raises(StoreConflictError, match="differ in: dump"):
            writer.start(layout, plan, {"dump": 2}, overwrite=False)
        with StoreWriter(tmp_path / "st") as writer:
            writer.start(layout, plan, {"dump": 1}, overwrite=False)
            assert sorted(writer.resumed) == [0]  # shard 1 was damaged: written again
            infos = [*writer.resumed.values()]
            infos += [writer.shard_writer().write(j, random_shard(rng, ids[7 * j : 7 * j + 7], 4, 10)) for j in (1, 2)]
            manifest = writer.commit(infos, teacher=TEST_TEACHER, dataset=dataset_record(ids, 8), config={})
        assert manifest.num_samples == 21 and StoreReader(tmp_path / "st").verify() == []
        assert not (tmp_path / "st" / ".pending.json").exists() and not (tmp_path / "st" / ".tmp").exists()

    def test_a_second_writer_is_refused_while_the_first_holds_the_lock(self, tmp_path):
        with StoreWriter(tmp_path / "st"):
            with pytest.raises(StoreLockedError, match="another dump"):
                StoreWriter(tmp_path / "st").__enter__()
        with StoreWriter(tmp_path / "st"):  # released on exit
            pass
        assert not (tmp_path / "st").exists()  # nothing written: nothing left behind

    def test_the_manifest_rejects_hostile_newer_or_inconsistent_content(self, tmp_path):
        build_store(tmp_path / "st", self.backend, np.arange(10), draws=4)
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
