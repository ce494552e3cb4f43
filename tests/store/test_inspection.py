"""What a store holds (logitstore.inspection) against the dense distributions of stores with known logits."""

from __future__ import annotations

import numpy as np
import pytest

from logitstore import StoreReader
from logitstore.codec import Codec
from logitstore.inspection import TAIL_LIMIT, collect, recommendation, temperature_recommendation
from logitstore.testing import TEMPS, build_store


def dense_reference(full: StoreReader, k: int, t: float):
    """Per position from a k = V store: tail outside the top-k, the k' covering 90/99% (k + 1 when
    the top-k falls short), the k+1-bucket entropy and the top-1 probability, by plain loops."""
    j = full.manifest.temperatures.index(t)
    tails, needed, entropy, top1 = [], {0.9: [], 0.99: []}, [], []
    for _, data in full.iter_shards():
        for z, lse in zip(data.topk_logit.astype(np.float64), data.logsumexp[:, j].astype(np.float64)):
            p = np.sort(np.exp(z / t - lse))[::-1]
            tails.append(p[k:].sum())
            for cover in needed:
                reach = [i + 1 for i in range(k) if p[: i + 1].sum() >= cover - 1e-6]
                needed[cover].append(reach[0] if reach else k + 1)
            buckets = [*p[:k], p[k:].sum()]
            entropy.append(-sum(b * np.log(b) for b in buckets if b > 0))
            top1.append(p[0])
    return np.array(tails), {c: np.array(v) for c, v in needed.items()}, np.array(entropy), np.array(top1)


@pytest.mark.parametrize("codec", [Codec(), Codec.make("delta", "logq", 12, TEMPS)], ids=["exact", "delta-logq12"])
def test_tail_mass_and_k_needed_match_the_dense_distribution(tmp_path, codec):
    ids = np.arange(60)
    build_store(
        tmp_path / "full", "zarr", ids, k=10, vocab=10, seed=4, shard_size=100
    )  # the same logits, every class kept
    build_store(tmp_path / "top3", "arrow", ids, k=3, vocab=10, seed=4, codec=codec, shard_size=100)
    stats = collect(StoreReader(tmp_path / "top3"))
    assert stats.positions == 60 and stats.reference_temperature == 1.0
    exact = codec.values == "float32"
    for s in stats.per_temperature:
        tails, needed, entropy, top1 = dense_reference(StoreReader(tmp_path / "full"), 3, s.temperature)
        # logq keeps the tail mass as float16 and the head to 12 bits: close, not exact.
        np.testing.assert_allclose(s.tail_mass, tails, rtol=1e-4 if exact else 2e-3, atol=1e-6 if exact else 1e-4)
        for cover in (0.9, 0.99):
            agree = np.mean(s.k_needed[cover] == needed[cover])
            assert agree == 1.0 if exact else agree > 0.95
        if s.temperature == 1.0:
            np.testing.assert_allclose(
                stats.entropy, entropy, rtol=1e-4 if exact else 1e-2, atol=1e-5 if exact else 1e-3
            )
            np.testing.assert_allclose(stats.top1_confidence, top1, rtol=1e-5 if exact else 1e-2)


def test_recommendation_names_the_smallest_k_for_99_percent_of_the_mass(tmp_path):
    build_store(tmp_path / "full", "zarr", np.arange(200), k=10, vocab=10, seed=1)
    stats = collect(StoreReader(tmp_path / "full"))
    ref = next(s for s in stats.per_temperature if s.temperature == 1.0)
    k = int(np.quantile(ref.k_needed[0.99], 0.95, method="higher"))
    assert np.mean(ref.k_needed[0.99] <= k) >= 0.95 and np.mean(ref.k_needed[0.99] <= k - 1) < 0.95
    assert recommendation(stats).startswith(f"k={k} keeps 99% of the mass at T=1 for 95% of positions")
    build_store(tmp_path / "top1", "zarr", np.arange(200), k=1, vocab=10, seed=1)
    assert "for only" in recommendation(collect(StoreReader(tmp_path / "top1")))  # one class cannot hold 99% here


def test_the_temperature_recommended_is_the_hottest_whose_median_tail_stays_small(tmp_path):
    # Against the dense distribution: the median mass outside the top-k at each recorded T, by loops.
    build_store(tmp_path / "full", "zarr", np.arange(200), k=10, vocab=10, seed=1)
    for k in (1, 3, 6):
        build_store(tmp_path / f"top{k}", "zarr", np.arange(200), k=k, vocab=10, seed=1)
        stats = collect(StoreReader(tmp_path / f"top{k}"))
        medians = {t: float(np.median(dense_reference(StoreReader(tmp_path / "full"), k, t)[0])) for t in TEMPS}
        fine = [t for t, m in medians.items() if m <= TAIL_LIMIT]
        text = temperature_recommendation(stats)
        if fine:
            assert text.startswith(f"--temperature {max(fine):g}: the highest recorded T"), (k, medians, text)
        else:
            assert text.startswith("at every recorded T the tail beyond k holds over 25%"), (k, medians, text)
        assert all(f"{m:.2g} at T={t:g}" in text for t, m in medians.items())


def test_an_adaptive_stores_tail_counts_only_each_positions_own_head(tmp_path):
    """The tail of an adaptive store is beyond each position's own c classes (its padding adds no
    mass), and the summary reports the mean head size."""
    from logitstore.inspection import summary

    ids = np.arange(40)
    build_store(tmp_path / "full", "zarr", ids, k=10, vocab=10, seed=5, shard_size=100)
    shards = build_store(tmp_path / "ad", "zarr", ids, k=6, vocab=10, seed=5, shard_size=100, top_p=0.6)
    counts = shards[0].extras["topk_count"].astype(int)
    assert len(set(counts.tolist())) > 1
    reader = StoreReader(tmp_path / "ad")
    stats = collect(reader)
    _, full = next(StoreReader(tmp_path / "full").iter_shards())
    p = np.sort(np.exp(full.topk_logit.astype(np.float64) - full.logsumexp[:, :1]), axis=1)[:, ::-1]
    want = np.array([p[i, c:].sum() for i, c in enumerate(counts)])
    np.testing.assert_allclose(stats.per_temperature[0].tail_mass, want, atol=1e-6)
    assert summary(reader, stats)["entries_per_position"] == pytest.approx(counts.mean())
