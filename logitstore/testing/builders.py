"""What the conformance suites and the tests build and compare: shards of real top-k distributions
(random logits, exact normalisers), layouts, whole stores written through the StoreWriter on any
storage, and content comparisons that know each codec's bound."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from logitstore.backends import get_backend
from logitstore.checksum import files_checksum, shard_checksum
from logitstore.codec import Codec, Compander
from logitstore.features import projections, quantize
from logitstore.layout import Features, Inputs, Selection, StoreLayout, Views, index_dtype_for
from logitstore.planning import plan_shards
from logitstore.reader import topk_probabilities
from logitstore.shard import (
    ShardData,
    TokenInputs,
    adaptive_head_sizes,
    head_mask,
    trim_samples,
    with_canonical_padding,
)
from logitstore.writer import open_writer

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


def with_features(rng, data: ShardData, features: Features) -> ShardData:
    """Random projected states of `features`' layers, quantized as a writer does."""
    p, n = data.num_positions, features.count
    y = rng.normal(0, 3, size=(p * n, features.dim)).astype(np.float32)
    codes, scale = quantize(y)
    return with_extras(data, feature_code=codes.reshape(p, n * features.dim), feature_scale=scale.reshape(p, n))


# two layers of the widths a small model has, projected to 5 dimensions
TEST_FEATURES = Features(layers=(0, 2), widths=(12, 9), dim=5, seed=11)


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
    features: Features | None = None,
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
        features=features,
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
    features: Features | None = None,
) -> list[ShardData]:
    """A complete store of random shards through the StoreWriter (carrying random tokens of at
    most `seq_len` when it is not 0; an adaptive head of mass `top_p` when given; random features
    and their orthogonal projections when `features` is given); -> the shards as written."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(ids, dtype=np.int64)
    layout = layout_for(
        backend, k=k, vocab=vocab, shard_size=shard_size, draws=draws, codec=codec, seq_len=seq_len, top_p=top_p,
        features=features,
    )  # fmt: skip
    plan = plan_shards(ids, shard_size)
    shards, infos, start = [], [], 0
    with open_writer(root) as writer:  # a local path or an object-storage URI
        writer.start(layout, plan, {"test": seed}, overwrite=False)
        projection = "" if features is None else writer.save_projection(projections(features))
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
            if features is not None:
                data = with_features(rng, data, features)
            start += n
            shards.append(data)
            infos.append(writer.shard_writer().write(j, data))
        writer.commit(
            infos, teacher=TEST_TEACHER, dataset=dataset_record(ids, seed), config={}, features_sha256=projection
        )
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
