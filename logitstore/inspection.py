"""What a store holds, per position: tail mass at each recorded T, teacher entropy and top-1
confidence, and the k that covers 90% / 99% of the mass; a recommended k and temperature. (jobs/inspect_store.py
prints and plots them.)

Everything is computed from the stored head and its exact normalisers, so it is exact for the
head; the full distribution's entropy is not stored, and `entropy` is that of the k classes plus
one tail bucket (a lower bound of the full entropy: merging classes never adds entropy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from logitstore.backends import get_backend
from logitstore.reader import StoreReader, topk_probabilities

COVER = (0.90, 0.99)


@dataclass
class TemperatureStats:
    temperature: float
    tail_mass: np.ndarray  # [P] float32
    # cover -> [P] int: the k' covering that share of the mass, k + 1 where the stored head falls short
    k_needed: dict[float, np.ndarray] = field(default_factory=dict)


@dataclass
class StoreStats:
    positions: int  # positions sampled
    total_positions: int
    shards_read: int
    top_k: int
    entropy: np.ndarray  # [P] nats, at T = 1 (or the first recorded T), head + tail bucket
    top1_confidence: np.ndarray  # [P] teacher probability of its top-1 at that T
    reference_temperature: float
    per_temperature: list[TemperatureStats]
    head_sizes: np.ndarray | None = None  # [P] classes each position holds (adaptive stores), else None


def _k_needed(probs: np.ndarray, cover: float, top_k: int) -> np.ndarray:
    """Smallest k' with the k' largest stored probabilities summing to >= cover; top_k + 1 if none."""
    ordered = -np.sort(-probs, axis=1)  # a delta-coded store returns the head by id, not by value
    reached = np.cumsum(ordered, axis=1, dtype=np.float64) >= cover - 1e-6
    return np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, top_k + 1)


def collect(reader: StoreReader, max_positions: int = 200_000) -> StoreStats:
    """Read shards spread evenly over the store until `max_positions` positions are in hand."""
    m = reader.manifest
    # Shards in a golden-ratio order: any prefix of it is spread evenly over the store.
    order = np.argsort([(i * 0.6180339887) % 1.0 for i in range(reader.num_shards)], kind="stable")
    parts: list[dict[str, np.ndarray]] = []
    seen = 0
    # An adaptive shard's head is as wide as its widest position: all padded to the widest read.
    width = 0
    for index in order:
        data = reader.read_shard(int(index))
        width = max(width, data.top_k)
        parts.append(
            {
                "logit": data.topk_logit,
                "lse": data.logsumexp,
                "rest": data.extras.get("rest_mass"),
                "count": data.extras.get("topk_count"),
            }
        )
        seen += data.topk_logit.shape[0]
        if seen >= max_positions:
            break
    for p in parts:  # padding entries (topk_count masks them) hold the position's smallest logit
        extra = width - p["logit"].shape[1]
        if extra > 0 and p["count"] is not None:
            smallest = p["logit"].min(axis=1, keepdims=True) if p["logit"].shape[0] else p["logit"][:, :1]
            p["logit"] = np.concatenate([p["logit"], np.repeat(smallest, extra, axis=1)], axis=1)
    logits = np.concatenate([p["logit"] for p in parts])[:max_positions]
    lse = np.concatenate([p["lse"] for p in parts])[:max_positions]
    rest = None if parts[0]["rest"] is None else np.concatenate([p["rest"] for p in parts])[:max_positions]
    count = None if parts[0]["count"] is None else np.concatenate([p["count"] for p in parts])[:max_positions]

    reference = 1.0 if 1.0 in m.temperatures else m.temperatures[0]
    per_t = []
    for j, t in enumerate(m.temperatures):
        probs, tail = topk_probabilities(logits, lse[:, j], t, None if rest is None else rest[:, j], count)
        stats = TemperatureStats(t, tail, {c: _k_needed(probs, c, m.top_k) for c in COVER})
        per_t.append(stats)
        if t == reference:
            buckets = np.concatenate([probs, tail[:, None]], axis=1).astype(np.float64)
            entropy = -np.sum(np.where(buckets > 0, buckets * np.log(np.where(buckets > 0, buckets, 1.0)), 0.0), axis=1)
            confidence = probs.max(axis=1, initial=0.0)
    return StoreStats(
        positions=len(logits),
        total_positions=m.num_positions,
        shards_read=len(parts),
        top_k=m.top_k,
        entropy=entropy,
        top1_confidence=confidence,
        reference_temperature=reference,
        per_temperature=per_t,
        head_sizes=count,
    )


TAIL_LIMIT = 0.25  # above it, a KD target is mostly one undifferentiated bucket


def temperature_recommendation(stats: StoreStats, limit: float = TAIL_LIMIT) -> str:
    """The highest recorded T at which the median position's tail (the mass beyond its stored head)
    is at most `limit`: hotter targets carry more of the teacher's ranking only while the head still
    resolves them."""
    if stats.positions == 0:
        return "the positions read hold no entries: nothing to recommend"
    medians = {s.temperature: float(np.median(s.tail_mass)) for s in stats.per_temperature}
    listed = ", ".join(f"{m:.2g} at T={t:g}" for t, m in sorted(medians.items()))
    fine = [t for t, m in medians.items() if m <= limit]
    if not fine:
        return (
            f"at every recorded T the tail beyond k holds over {limit:.0%} of the mass (median {listed}): train at "
            f"the lowest, --temperature {min(medians):g}, or dump a larger k"
        )
    return (
        f"--temperature {max(fine):g}: the highest recorded T whose tail beyond the stored head stays under "
        f"{limit:.0%} of the mass (median {listed})"
    )


def recommendation(stats: StoreStats, cover: float = 0.99, share: float = 0.95) -> str:
    """The smallest k that keeps `cover` of the mass at the reference T for `share` of positions."""
    if stats.positions == 0:
        return "the positions read hold no entries: nothing to recommend"
    ref = next(s for s in stats.per_temperature if s.temperature == stats.reference_temperature)
    if stats.head_sizes is not None:  # adaptive: the heads are as large as the store's top_p asked
        full = float(np.mean(stats.head_sizes == stats.top_k))
        return (
            f"adaptive heads hold {float(stats.head_sizes.mean()):.2f} classes per position on average; "
            f"{full:.0%} of positions reached the cap of {stats.top_k} (raise the cap, max_k, if that share is "
            "large, or top_p to keep more of the tail)"
        )
    needed = ref.k_needed[cover]
    k = int(np.quantile(needed, share, method="higher"))
    t = f"T={stats.reference_temperature:g}"
    if k <= stats.top_k:
        return (
            f"k={k} keeps {cover:.0%} of the mass at {t} for {share:.0%} of positions "
            f"(this store holds k={stats.top_k}; a dump keeping k={k} would be {k / stats.top_k:.0%} of the entries)"
        )
    covered = float(np.mean(needed <= stats.top_k))
    text = (
        f"k={stats.top_k} (all stored) keeps {cover:.0%} of the mass at {t} for only {covered:.0%} of positions: "
        f"the tail bucket carries the rest; a dump keeping a larger k resolves it"
    )
    k90 = int(np.quantile(ref.k_needed[COVER[0]], share, method="higher"))
    if cover != COVER[0] and k90 <= stats.top_k:
        text += f" (k={k90} already keeps {COVER[0]:.0%} of the mass for {share:.0%} of positions)"
    return text


def _q(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q))


def _spread(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "median": _q(values, 0.5), "p5": _q(values, 0.05), "p95": _q(values, 0.95)}


def _per_temperature(stats: StoreStats, top_k: int) -> list[dict]:
    """Per recorded temperature: the tail mass's distribution, and the k that covers each share of
    the mass (median, p95, and the share of positions the stored head covers)."""
    rows = []
    for s in stats.per_temperature:
        row = {
            "temperature": s.temperature,
            "tail_mean": float(s.tail_mass.mean()),
            "tail_median": _q(s.tail_mass, 0.5),
            "tail_p95": _q(s.tail_mass, 0.95),
            "tail_max": float(s.tail_mass.max()),
        }
        for c, needed in s.k_needed.items():
            name = f"k{round(c * 100)}"
            row |= {f"{name}_median": _q(needed, 0.5), f"{name}_p95": _q(needed, 0.95)}
            row[f"{name}_covered"] = float(np.mean(needed <= top_k))
        rows.append(row)
    return rows


def feature_bytes(reader: StoreReader) -> dict | None:
    """What a store's features cost: its largest shard encoded by its backend with and without the
    feature arrays (compressed as on disk), per position; None for a store without features."""
    m = reader.manifest
    if m.layout.features is None:
        return None
    index = max(range(len(m.shards)), key=lambda i: m.shards[i].num_positions)
    data = reader.read_shard(index)
    arrays = m.codec.encode(data)
    backend = get_backend(m.backend)
    full = sum(len(b) for b in backend.encode(arrays).values())
    rest = sum(
        len(b) for b in backend.encode({k: a for k, a in arrays.items() if not k.startswith("feature_")}).values()
    )
    f, positions = m.layout.features, max(data.num_positions, 1)
    return {
        "layers": list(f.layers),
        "dim": f.dim,
        "bytes_per_position": (full - rest) / positions,  # on disk, compressed
        "raw_bytes_per_position": f.count * (f.dim + 4),  # the int8 codes and a float32 scale per layer
        "share_of_store": (full - rest) / full if full else 0.0,
        "logits_bytes_per_position": rest / positions,
    }


def summary(reader: StoreReader, stats: StoreStats) -> dict:
    m = reader.manifest
    # An adaptive store holds fewer entries than k per position: estimated from the positions read.
    k_mean = float(stats.head_sizes.mean()) if stats.head_sizes is not None and stats.head_sizes.size else m.top_k
    entries = m.num_positions * k_mean
    teacher = {k: m.teacher[k] for k in ("spec", "weights_sha256", "num_parameters", "dtype") if k in m.teacher}
    dataset = {k: m.dataset[k] for k in ("spec", "num_samples", "ids_sha256", "inputs_sha256") if k in m.dataset}
    return {
        "store": str(reader.root),
        "format_version": m.format_version,
        "backend": m.backend,
        "codec": m.codec.to_json(),
        "selection": m.selection.to_json(),
        "samples": m.num_samples,
        "positions": m.num_positions,
        "shards": len(m.shards),
        "top_k": m.top_k,
        "vocab_size": m.vocab_size,
        "temperatures": list(m.temperatures),
        "bytes": m.num_bytes,
        "bytes_per_entry": m.num_bytes / entries if entries else None,
        "entries_per_position": k_mean,
        "teacher": teacher,
        "dataset": dataset,
        "tokenizer": None if m.tokenizer is None else m.tokenizer.to_json(),
        # Views name their augmentation: a name, or code (module:function) that reading never runs.
        "views": None if m.views is None else m.views.to_json(),
        "features": feature_bytes(reader),
        "sampled_positions": stats.positions,
        "shards_read": stats.shards_read,
        "reference_temperature": stats.reference_temperature,
        "entropy": _spread(stats.entropy),
        "top1_confidence": _spread(stats.top1_confidence),
        "per_temperature": _per_temperature(stats, m.top_k),
        "recommendation": recommendation(stats),
        "temperature_recommendation": temperature_recommendation(stats),
    }
