"""The store contract, run against every backend (the zarr-python StoreTests pattern)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from logitstore import (
    ManifestError,
    ShardCorruptError,
    ShardDataError,
    StoreExistsError,
    StoreNotFoundError,
    StoreReader,
    commit_store,
    plan_shards,
    prepare_store_dir,
    write_shard,
)
from logitstore.backends import get_backend
from logitstore.codec import Codec, Compander
from logitstore.manifest import Manifest, parse_manifest
from logitstore.shard import ShardData, index_dtype_for, pad_samples, trim_samples

BACKENDS = ["zarr", "arrow"]
TEMPS = [1.0, 2.0, 4.0]
CODECS = {
    "plain": Codec(),
    "delta": Codec.make("delta"),
    "logq": Codec.make("delta", "logq", 8, TEMPS),
    "plain-logq12": Codec.make("plain", "logq", 12, TEMPS),
}


def by_class(data: ShardData) -> tuple[np.ndarray, np.ndarray]:
    """Each row's (index, logit) sorted by class id: the content, whatever order a codec returns."""
    order = np.argsort(data.topk_index, axis=1, kind="stable")
    return np.take_along_axis(data.topk_index, order, axis=1), np.take_along_axis(data.topk_logit, order, axis=1)


def same_content(got: ShardData, want: ShardData, codec: Codec) -> None:
    """`got` (read back through `codec`) holds `want`: exactly for lossless codecs; for logq within
    the quantizer's bound, with the exact tail mass."""
    for a, b in [(got.sample_id, want.sample_id), (got.position_offsets, want.position_offsets)]:
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert got.logsumexp.dtype == np.float32
    if codec.lossless:
        assert np.array_equal(got.logsumexp, want.logsumexp)
    else:  # stored as the top-1's log-probability in float16
        np.testing.assert_allclose(got.logsumexp, want.logsumexp, rtol=1e-3, atol=1e-2)
    assert got.topk_index.dtype == want.topk_index.dtype and got.has_samples == want.has_samples
    if want.has_samples:
        assert np.array_equal(got.sample_index, want.sample_index) and np.array_equal(got.sample_count, want.sample_count)
    got_index, got_logit = by_class(got)
    want_index, want_logit = by_class(want)
    assert np.array_equal(got_index, want_index)
    if got.num_positions:  # column 0 holds the teacher's top-1, exactly, with the largest logit
        assert np.all(got.topk_logit[:, :1] >= got.topk_logit)
        assert np.array_equal(got.topk_index[:, 0], want.topk_index[:, 0])
    if codec.lossless:
        assert got.rest_mass is None and np.array_equal(got_logit, want_logit)
        assert np.array_equal(got.topk_index[:, 0], want.topk_index[:, 0])
        return
    comp = Compander(codec.t_min, codec.t_max, codec.bits)
    top1 = want.topk_logit[:, :1]
    f_true = comp.forward(top1 - want_logit)
    f_err = np.abs(comp.forward(top1 - got_logit) - f_true)
    # half a step, except in the last code, which also holds every larger gap (at most a step off)
    # (and entries within half a step of the top-1, which code 1 rather than share its code 0)
    bound = np.where((f_true < (comp.levels - 1.5) * comp.step) & (f_true >= comp.step / 2), comp.step / 2, comp.step)
    assert np.all(f_err <= bound * (1 + 1e-4) + 1e-6)
    z = want.topk_logit.astype(np.float64)
    for r, t in enumerate(TEMPS):
        exact = 1 - np.exp(z / t - want.logsumexp[:, r:r + 1]).sum(axis=1)
        # log(rest) in float16: a relative error of at most 2^-11 |log rest|
        np.testing.assert_allclose(got.rest_mass[:, r], np.clip(exact, 0, 1), rtol=2e-2, atol=1e-7)


@pytest.fixture(params=list(CODECS))
def codec(request):
    return CODECS[request.param]


def with_samples(rng, data: ShardData, vocab: int, draws: int, trim: bool = False) -> ShardData:
    """Add `draws` multinomial draws per position, as distinct ids with uint16 counts (only as
    many columns as the shard needs when `trim`, as the dump writes them)."""
    p = data.num_positions
    counts = np.stack([np.bincount(rng.integers(0, vocab, size=draws), minlength=vocab) for _ in range(p)]) if p else np.zeros((0, vocab), np.int64)
    order = np.argsort(-counts, axis=1, kind="stable")[:, :draws]
    index, count = order.astype(index_dtype_for(vocab)), np.take_along_axis(counts, order, axis=1).astype(np.uint16)
    if trim:
        index, count = trim_samples(index, count)
    return ShardData(data.sample_id, data.position_offsets, data.topk_index, data.topk_logit, data.logsumexp,
                     sample_index=index, sample_count=count)


def random_shard(rng, ids, k, vocab, positions_per_sample=None) -> ShardData:
    """Real top-k/logsumexp of random logits; variable positions per sample when asked."""
    n = len(ids)
    lengths = positions_per_sample if positions_per_sample is not None else np.ones(n, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    p = int(offsets[-1])
    z = rng.normal(size=(p, vocab)).astype(np.float32) * 3
    order = np.argsort(-z, axis=1, kind="stable")[:, :k]
    lse = np.stack([np.log(np.exp(z.astype(np.float64) / t).sum(axis=1)) for t in TEMPS], axis=1)
    return ShardData(
        sample_id=np.asarray(ids, dtype=np.int64),
        position_offsets=offsets,
        topk_index=order.astype(index_dtype_for(vocab)),
        topk_logit=np.take_along_axis(z, order, axis=1),
        logsumexp=lse.astype(np.float32),
    )


def build_store(root, backend, ids, k=4, vocab=10, shard_size=7, lengths=None, seed=0, draws=0, codec=Codec()):
    rng = np.random.default_rng(seed)
    ids = np.asarray(ids, dtype=np.int64)
    plan = plan_shards(ids, shard_size)
    prepare_store_dir(root, overwrite=False)
    infos, shards = [], []
    start = 0
    for j in range(plan.num_shards):
        n = int(plan.counts[j])
        data = random_shard(rng, ids[start:start + n], k, vocab, None if lengths is None else lengths[start:start + n])
        if draws:
            data = with_samples(rng, data, vocab, draws, trim=True)
        start += n
        shards.append(data)
        infos.append(write_shard(root, backend, j, data, top_k=k, num_temperatures=len(TEMPS),
                                 index_dtype=index_dtype_for(vocab), vocab_size=vocab, draws=draws, codec=codec))
    manifest = Manifest(
        backend=backend, top_k=k, vocab_size=vocab, index_dtype=index_dtype_for(vocab), value_dtype="float32",
        temperatures=TEMPS, num_samples=len(ids), num_positions=sum(s.num_positions for s in shards),
        shard_size=shard_size, teacher={"spec": "test"}, dataset={"spec": "test"}, shards=infos,
        selection={"kind": "hybrid", "draws": draws, "temperature": 1.0} if draws else {"kind": "topk"},
        codec=codec.to_json(),
        format_version=Manifest.version_for({"kind": "hybrid" if draws else "topk"}, codec.to_json()),
    )
    commit_store(root, manifest)
    return shards


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def round_trip(backend: str, codec: Codec, path, data: ShardData) -> ShardData:
    get_backend(backend).write(str(path), codec.encode(data))
    return codec.decode(get_backend(backend).read(str(path)))


def test_backend_round_trip_is_exact(tmp_path, backend, codec):
    rng = np.random.default_rng(1)
    for vocab in (10, 70_000):  # uint16 and uint32 indices
        data = random_shard(rng, [3, 5, 9], k=5, vocab=vocab)
        back = round_trip(backend, codec, tmp_path / f"s{vocab}", data)
        same_content(back, data, codec)
        assert back.topk_index.dtype == np.dtype(index_dtype_for(vocab))
        if codec.is_default:
            assert back.equals(data)


def test_variable_positions_round_trip(tmp_path, backend, codec):
    rng = np.random.default_rng(2)
    lengths = np.array([1, 0, 5, 3], dtype=np.int64)
    data = random_shard(rng, [0, 1, 2, 3], k=3, vocab=50, positions_per_sample=lengths)
    back = round_trip(backend, codec, tmp_path / "s", data)
    same_content(back, data, codec)
    assert back.num_positions == 9


def test_store_streams_and_looks_up_by_id(tmp_path, backend, codec):
    ids = np.arange(100, 130) * 3
    shards = build_store(tmp_path / "st", backend, ids, codec=codec)
    reader = StoreReader(tmp_path / "st")
    assert reader.num_shards == 5 and reader.manifest.num_samples == 30
    assert reader.manifest.format_version == (1 if codec.is_default else 3)
    streamed = [d for _, d in reader.iter_shards()]
    for got, want in zip(streamed, shards):
        same_content(got, want, codec)
    query = np.array([ids[29], ids[0], ids[8], ids[7]])
    got = reader.lookup(query)
    assert got.sample_id.tolist() == query.tolist()
    expected = [streamed[4].select([1]), streamed[0].select([0]), streamed[1].select([1]), streamed[1].select([0])]
    np.testing.assert_array_equal(got.topk_logit, np.concatenate([e.topk_logit for e in expected]))
    np.testing.assert_array_equal(got.topk_index, np.concatenate([e.topk_index for e in expected]))
    if not codec.lossless:
        np.testing.assert_array_equal(got.rest_mass, np.concatenate([e.rest_mass for e in expected]))
    with pytest.raises(KeyError):
        reader.lookup(np.array([ids[0] + 1]))


def test_reader_memory_is_bounded_by_cache(tmp_path, backend):
    build_store(tmp_path / "st", backend, np.arange(50), shard_size=5)
    reader = StoreReader(tmp_path / "st", cache_shards=2)
    for _ in reader.iter_shards():
        assert len(reader._cache) <= 2


def test_incomplete_store_is_refused(tmp_path, backend):
    build_store(tmp_path / "st", backend, np.arange(10))
    os.remove(tmp_path / "st" / "manifest.json")
    with pytest.raises(StoreNotFoundError, match="no complete store"):
        StoreReader(tmp_path / "st")


def test_existing_store_is_kept_without_overwrite(tmp_path, backend):
    build_store(tmp_path / "st", backend, np.arange(10))
    before = (tmp_path / "st" / "manifest.json").read_bytes()
    with pytest.raises(StoreExistsError, match="--overwrite"):
        prepare_store_dir(tmp_path / "st", overwrite=False)
    assert (tmp_path / "st" / "manifest.json").read_bytes() == before
    assert StoreReader(tmp_path / "st").verify() == []


def test_any_flipped_byte_or_truncation_is_detected_by_verify_and_the_reader(tmp_path, backend):
    """One byte flipped at 80 random positions of random shard files (data and metadata alike), and
    truncations: each is reported by verify() naming that one shard, and the reader refuses it."""
    build_store(tmp_path / "st", backend, np.arange(40), shard_size=10)
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


def test_verify_store_cli_names_each_damaged_shard(tmp_path, backend, capsys):
    from jobs import verify_store

    build_store(tmp_path / "st", backend, np.arange(30), shard_size=10)
    assert verify_store.main([str(tmp_path / "st")]) == 0 and "all sound" in capsys.readouterr().out
    for index in (0, 2):
        victim = sorted(p for p in (tmp_path / "st" / "shards" / f"{index:05d}.{backend}").parent.rglob("*")
                        if p.is_file() and f"{index:05d}" in str(p))[-1]
        victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    assert verify_store.main([str(tmp_path / "st")]) == 1
    out = capsys.readouterr().out.splitlines()
    damaged = [line for line in out if line.startswith("damaged:")]
    assert len(damaged) == 2 and "shards/00000" in damaged[0] and "shards/00002" in damaged[1] and "2 damaged" in out[-1]
    assert verify_store.main([str(tmp_path / "nope")]) == 2 and "no store at" in capsys.readouterr().err


def test_writer_rejects_bad_shards(tmp_path, backend):
    rng = np.random.default_rng(3)
    prepare_store_dir(tmp_path / "st", overwrite=False)
    good = random_shard(rng, [1, 2, 3], k=3, vocab=10)
    kwargs = dict(top_k=3, num_temperatures=3, index_dtype="uint16", vocab_size=10)
    nan = good.topk_logit.copy()
    nan[1, 0] = np.nan
    bad_cases = {
        "NaN": ShardData(good.sample_id, good.position_offsets, good.topk_index, nan, good.logsumexp),
        "increasing": ShardData(good.sample_id[::-1].copy(), good.position_offsets, good.topk_index, good.topk_logit, good.logsumexp),
        "descending": ShardData(good.sample_id, good.position_offsets, good.topk_index, good.topk_logit[:, ::-1].copy(), good.logsumexp),
    }
    for needle, data in bad_cases.items():
        with pytest.raises(ShardDataError, match=needle):
            write_shard(tmp_path / "st", backend, 0, data, **kwargs)
    assert list((tmp_path / "st" / "shards").iterdir()) == []


def test_manifest_rejects_hostile_or_newer_content(tmp_path, backend):
    build_store(tmp_path / "st", backend, np.arange(10))
    raw = json.loads((tmp_path / "st" / "manifest.json").read_text())
    cases = [
        ({"format_version": 99}, "newer"),
        ({"top_k": "5"}, "type"),
        ({"shards": [{**raw["shards"][0], "name": "../../etc/passwd"}] + raw["shards"][1:]}, "not a valid shard name"),
        ({"num_samples": 10**30}, "out of range"),
        ({"temperatures": []}, "temperatures"),
    ]
    for change, needle in cases:
        with pytest.raises(ManifestError, match=needle):
            parse_manifest(json.dumps({**raw, **change}))
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(json.dumps(raw)[:-20])


def test_sampled_shards_round_trip(tmp_path, backend, codec):
    rng = np.random.default_rng(5)
    lengths = np.array([2, 0, 3], dtype=np.int64)
    data = with_samples(rng, random_shard(rng, [4, 8, 9], k=2, vocab=300, positions_per_sample=lengths), 300, 6)
    data.validate(top_k=2, num_temperatures=3, index_dtype="uint16", vocab_size=300, draws=6)
    back = round_trip(backend, codec, tmp_path / "s", data)
    same_content(back, data, codec)
    assert back.sample_count.dtype == np.uint16 and (back.sample_count.astype(int).sum(axis=1) == 6).all()


def test_logq_distortion_is_small_and_the_compander_inverts(tmp_path):
    """The quantizer's forward/inverse are inverses; on LM-like logits (a heavy head, a long tail)
    the mean KL of the k+1-bucket distribution at every recorded T is below 1e-4 nats at 10 bits
    and falls about 4x per extra bit."""
    comp = Compander(1.0, 4.0, 8)
    g = np.linspace(0, 60, 5001)
    np.testing.assert_allclose(comp.inverse(comp.forward(g)), g, rtol=1e-9, atol=1e-9)
    assert np.all(np.diff(comp.table) > 0) and np.isfinite(comp.table).all()
    rng = np.random.default_rng(7)
    v, k, p = 2000, 64, 3000
    z = (rng.standard_t(3, size=(p, v)) * 2.0 + np.linspace(8, 0, v) * rng.uniform(0.2, 1.5, size=(p, 1))).astype(np.float32)
    order = np.argsort(-z, axis=1)[:, :k]
    lse = np.stack([np.log(np.exp(z.astype(np.float64) / t).sum(axis=1)) for t in TEMPS], axis=1).astype(np.float32)
    data = ShardData(np.arange(p, dtype=np.int64), np.arange(p + 1, dtype=np.int64), order.astype(np.uint16),
                     np.take_along_axis(z, order, axis=1), lse)
    kls = {}
    for bits in (8, 10):
        codec = Codec.make("delta", "logq", bits, TEMPS)
        back = codec.decode(codec.encode(data))
        same_content(back, data, codec)
        kls[bits] = [mean_bucket_kl(data, back, r, t) for r, t in enumerate(TEMPS)]
    assert max(kls[10]) < 1e-4, kls
    assert all(8 < a / b < 25 for a, b in zip(kls[8], kls[10])), kls  # 2 bits: ~16x


def mean_bucket_kl(exact: ShardData, stored: ShardData, r: int, t: float) -> float:
    """Mean over positions of KL(exact k+1 buckets || the buckets the loss builds from `stored`)."""
    import torch

    from trainer.losses import teacher_buckets

    def buckets(d: ShardData) -> np.ndarray:
        ei, el = by_class(d)
        rest = None if d.rest_mass is None else torch.from_numpy(d.rest_mass[:, r]).double()
        _, head, tail = teacher_buckets(torch.from_numpy(el).double(), torch.from_numpy(d.logsumexp[:, r]).double(), t, None, rest)
        return np.concatenate([head.double().numpy(), tail.double().numpy()[:, None]], axis=1)

    p, q = buckets(exact), buckets(stored)
    return float(np.mean(np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300))), 0), axis=1)))


def test_manifest_codec_rules(tmp_path):
    build_store(tmp_path / "st", "zarr", np.arange(10), codec=CODECS["logq"])
    raw = json.loads((tmp_path / "st" / "manifest.json").read_text())
    assert raw["format_version"] == 3 and raw["codec"] == {"index": "delta", "values": "logq", "bits": 8}
    for change, needle in [({"codec": {"index": "huffman", "values": "float32"}}, "codec"),
                           ({"codec": {"index": "delta", "values": "logq", "bits": 40}}, "codec"),
                           ({"format_version": 2}, "version 2 declares codec")]:
        with pytest.raises(ManifestError, match=needle):
            parse_manifest(json.dumps({**raw, **change}))


def test_sampled_store_reads_back_and_is_version_2(tmp_path, backend):
    shards = build_store(tmp_path / "st", backend, np.arange(20), draws=6, vocab=8, shard_size=2)
    reader = StoreReader(tmp_path / "st")
    assert reader.manifest.format_version == 2 and reader.manifest.draws == 6
    widths = [s.sample_index.shape[1] for s in shards]
    assert len(set(widths)) > 1 and max(widths) <= 6  # shards keep only the columns they need
    for ids in (np.array([13, 2, 7]), np.arange(20)[::-1]):
        got = reader.lookup(ids)
        width = got.sample_index.shape[1]
        for row, i in enumerate(ids):
            index, count = pad_samples(shards[i // 2].sample_index[i % 2], shards[i // 2].sample_count[i % 2], width)
            np.testing.assert_array_equal(got.sample_count[row], count)
            np.testing.assert_array_equal(got.sample_index[row][count > 0], index[count > 0])
    assert reader.verify() == []


def test_manifest_selection_rules(tmp_path, backend):
    build_store(tmp_path / "st", backend, np.arange(10), draws=4)
    raw = json.loads((tmp_path / "st" / "manifest.json").read_text())
    for change, needle in [({"selection": {"kind": "magic"}}, "unknown"),
                           ({"format_version": 1}, "version 1 declares a sampled selection"),
                           ({"selection": {"kind": "sample", "draws": 0, "temperature": 1.0}}, "out of range")]:
        with pytest.raises(ManifestError, match=needle):
            parse_manifest(json.dumps({**raw, **change}))
