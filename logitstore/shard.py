"""The in-memory form of one shard: what every backend writes and reads back.

Positions are stored flat with CSR-style offsets, so a sample may have any number of positions
(one for a classifier, one per token for a sequence model). Beyond the five arrays every shard
has, a shard holds the optional arrays (`extras`) its layout calls for; each is described once,
by an `Extra` rule in EXTRAS: when a shard holds it and what it must look like. Adding an array
to the format means adding its rule here (and its section in FORMAT.md), nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from logitstore.errors import ShardDataError

if TYPE_CHECKING:
    from logitstore.layout import StoreLayout


@dataclass(frozen=True)
class Extra:
    """An optional per-position array (leading axis: the P positions of the shard)."""

    name: str
    expected: Callable[[StoreLayout], bool]  # a shard of this layout holds it, as a reader returns it
    check: Callable[[np.ndarray, ShardData, StoreLayout], list[str]]  # its rules, given that it is present
    stored: bool = True  # False: derived by the codec on reading (never handed to a writer)
    padded: bool = False  # [P, w] with w chosen per shard: zero-padded to one width where shards are joined


def _check_rest_mass(r: np.ndarray, data: ShardData, layout: StoreLayout) -> list[str]:
    p, t = data.num_positions, len(layout.temperatures)
    if r.dtype != np.float32 or r.shape != (p, t):
        return [f"rest_mass must be float32 [{p}, {t}], got {r.dtype} {r.shape}"]
    return [] if np.all((r >= 0) & (r <= 1)) else ["rest_mass must lie in [0, 1]"]


def _check_sample_index(si: np.ndarray, data: ShardData, layout: StoreLayout) -> list[str]:
    p, widest = data.num_positions, min(layout.draws, layout.vocab_size)
    if si.dtype != np.dtype(layout.index_dtype) or si.ndim != 2 or si.shape[0] != p or not 1 <= si.shape[1] <= widest:
        return [
            f"sample_index must be {layout.index_dtype} [{p}, w] with 1 <= w <= {widest}, got {si.dtype} {si.shape}"
        ]
    return (
        [f"sample_index must hold class ids < {layout.vocab_size}"] if p and int(si.max()) >= layout.vocab_size else []
    )


def _check_sample_count(sc: np.ndarray, data: ShardData, layout: StoreLayout) -> list[str]:
    si = data.extras.get("sample_index")
    if sc.dtype != np.uint16 or si is None or sc.shape != si.shape:
        return [f"sample_count must be uint16 and shaped as sample_index, got {sc.dtype} {sc.shape}"]
    if sc.size and np.any(sc.astype(np.int64).sum(axis=1) != layout.draws):
        return [f"sample_count must sum to {layout.draws} draws per position"]
    return []


def _check_view_seed(v: np.ndarray, data: ShardData, layout: StoreLayout) -> list[str]:
    p, views = data.num_positions, layout.num_views
    out = (
        [] if v.dtype == np.int64 and v.shape == (p,) else [f"view_seed must be int64 [{p}] ({views} views per sample)"]
    )
    o = data.position_offsets
    if o.shape == (data.num_samples + 1,) and np.any(np.diff(o) != views):
        out.append(f"every sample must hold exactly {views} positions (one per view)")
    return out


def _check_topk_count(c: np.ndarray, data: ShardData, layout: StoreLayout) -> list[str]:
    p, a, k = data.num_positions, layout.selection.min_k, layout.top_k
    if c.dtype != np.uint16 or c.shape != (p,):
        return [f"topk_count must be uint16 [{p}], got {c.dtype} {c.shape}"]
    if not np.all((c >= a) & (c <= k)):
        return [f"topk_count must lie in {a}..{k} (min_k..top_k)"]
    # The head's columns: a reader's as many as the shard's positions hold, a writer's up to top_k.
    return [] if not p or int(c.max()) <= data.top_k else [f"topk_count exceeds the head's {data.top_k} columns"]


def _check_feature_code(c: np.ndarray, data: ShardData, layout: StoreLayout) -> list[str]:
    p, f = data.num_positions, layout.features
    width = f.count * f.dim
    return (
        []
        if c.dtype == np.int8 and c.shape == (p, width)
        else [f"feature_code must be int8 [{p}, {width}], got {c.dtype} {c.shape}"]
    )


def _check_feature_scale(s: np.ndarray, data: ShardData, layout: StoreLayout) -> list[str]:
    p, n = data.num_positions, layout.features.count
    if s.dtype != np.float32 or s.shape != (p, n):
        return [f"feature_scale must be float32 [{p}, {n}], got {s.dtype} {s.shape}"]
    return [] if np.all(np.isfinite(s) & (s >= 0)) else ["feature_scale must be finite and >= 0"]


TOKEN_ARRAYS = ("token_offsets", "input_ids", "loss_mask")


@dataclass(frozen=True)
class TokenInputs:
    """The tokens a store that carries its inputs keeps per sample (FORMAT.md, version 5).

    Shapes (S samples, N tokens in total):
      offsets   int64 [S+1]  tokens of sample i are entries offsets[i]:offsets[i+1]
      input_ids uint16|uint32 [N]  the token ids the teacher read
      loss_mask uint8 [N]    1 where the position after reading that token is stored
    """

    offsets: np.ndarray
    input_ids: np.ndarray
    loss_mask: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {"token_offsets": self.offsets, "input_ids": self.input_ids, "loss_mask": self.loss_mask}

    def problems(self, data: ShardData, layout: StoreLayout) -> list[str]:
        o, ids, mask, s = self.offsets, self.input_ids, self.loss_mask, data.num_samples
        if o.dtype != np.int64 or o.shape != (s + 1,):
            return [f"token_offsets must be int64 [{s + 1}], got {o.dtype} {o.shape}"]
        n = ids.shape[0] if ids.ndim == 1 else -1
        if ids.dtype != np.dtype(layout.index_dtype) or ids.ndim != 1 or mask.dtype != np.uint8 or mask.shape != (n,):
            return [
                f"input_ids must be {layout.index_dtype} [N] and loss_mask uint8 [N], got {ids.dtype} {ids.shape} "
                f"and {mask.dtype} {mask.shape}"
            ]
        out = []
        lengths = np.diff(o)
        seq_len = layout.inputs.seq_len if layout.inputs else 0
        if o[0] != 0 or o[-1] != n or np.any(lengths < 1) or np.any(lengths > seq_len):
            out.append(f"token_offsets must start at 0 and end at {n}, every sample holding 1..{seq_len} tokens")
        elif n and int(ids.max()) >= layout.vocab_size:
            out.append(f"input_ids holds a token id >= vocabulary size {layout.vocab_size}")
        elif np.any(mask > 1):
            out.append("loss_mask must hold 0 or 1")
        elif not np.array_equal(
            np.add.reduceat(mask.astype(np.int64), o[:-1]) if n else np.zeros(s, np.int64),
            np.diff(data.position_offsets),
        ):
            out.append("every sample must hold exactly as many positions as its loss_mask holds ones")
        return out

    def select(self, rows: np.ndarray) -> TokenInputs:
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        at = positions_between(starts, ends)
        return TokenInputs(offsets, self.input_ids[at], self.loss_mask[at])

    @staticmethod
    def concat(parts: list[TokenInputs]) -> TokenInputs:
        sizes = np.cumsum([0] + [p.input_ids.shape[0] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + n for p, n in zip(parts, sizes)]).astype(np.int64)
        return TokenInputs(
            offsets, np.concatenate([p.input_ids for p in parts]), np.concatenate([p.loss_mask for p in parts])
        )

    def sample(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, loss_mask) of the sample at `row`."""
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        return self.input_ids[a:b], self.loss_mask[a:b]


EXTRAS: dict[str, Extra] = {
    e.name: e
    for e in (
        # the tail mass 1 - sum_i p_i(T_r) of the stored classes, per recorded T, from a lossy value codec
        Extra("rest_mass", lambda layout: not layout.codec.lossless, _check_rest_mass, stored=False),
        # `sample` / `hybrid` selections: distinct drawn class ids by descending count, and their counts
        Extra("sample_index", lambda layout: layout.draws > 0, _check_sample_index, padded=True),
        Extra("sample_count", lambda layout: layout.draws > 0, _check_sample_count, padded=True),
        # stores of augmented views: the seed each view's input was augmented with
        Extra("view_seed", lambda layout: layout.num_views > 0, _check_view_seed),
        # adaptive top-k: how many of the k columns each position holds (the rest are padding)
        Extra("topk_count", lambda layout: layout.selection.adaptive, _check_topk_count),
        # teacher features: each layer's projected hidden state, int8 codes and a scale per position and layer
        Extra("feature_code", lambda layout: layout.features is not None, _check_feature_code),
        Extra("feature_scale", lambda layout: layout.features is not None, _check_feature_scale),
    )
}


@dataclass(frozen=True)
class ShardData:
    """One shard's content.

    Shapes (S samples, P positions in total, k stored classes, R recorded temperatures):
      sample_id        int64   [S]    strictly increasing
      position_offsets int64   [S+1]  positions of sample i are rows offsets[i]:offsets[i+1]
      topk_index       uint16|uint32 [P, k]  class ids; column 0 is the teacher's top-1, the others
                                       by descending logit when `ordered`, else in the codec's order
      topk_logit       float32 [P, k]  raw teacher logits z of those classes (before temperature)
      logsumexp        float32 [P, R]  logsumexp(z / T_r) over the full vocabulary
      extras           {name: [P, ...]}  the optional arrays of EXTRAS the layout calls for
      tokens           the samples' tokens and loss masks (stores that carry their inputs), or None
    """

    sample_id: np.ndarray
    position_offsets: np.ndarray
    topk_index: np.ndarray
    topk_logit: np.ndarray
    logsumexp: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    ordered: bool = True
    tokens: TokenInputs | None = None

    @property
    def num_samples(self) -> int:
        return int(self.sample_id.shape[0])

    @property
    def num_positions(self) -> int:
        return int(self.topk_index.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.topk_index.shape[1])

    def positions_of(self, row: int) -> slice:
        return slice(int(self.position_offsets[row]), int(self.position_offsets[row + 1]))

    def per_position(self) -> dict[str, np.ndarray]:
        """Every array with one row per position, by name (the top-k arrays and the extras)."""
        return {
            "topk_index": self.topk_index,
            "topk_logit": self.topk_logit,
            "logsumexp": self.logsumexp,
            **self.extras,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the shard, by name."""
        tokens = self.tokens.arrays() if self.tokens is not None else {}
        return {"sample_id": self.sample_id, "position_offsets": self.position_offsets, **self.per_position(), **tokens}

    def validate(self, layout: StoreLayout, *, reading: bool = True) -> None:
        """Raise ShardDataError if this shard breaks the format's rules for `layout`. A writer's
        input (`reading=False`) never holds the arrays a codec derives when reading."""
        problems = self._base_problems(layout)
        for name in self.extras:
            if name not in EXTRAS:
                problems.append(f"{name} is not an array of the format")
        for name, rule in EXTRAS.items():
            wanted = rule.expected(layout) and (reading or rule.stored)
            present = name in self.extras
            if present and not wanted:
                problems.append(f"{name} is present but the store's layout has no place for it")
            elif wanted and not present:
                problems.append(f"{name} is required by the store's layout but missing")
            elif present:
                problems += rule.check(self.extras[name], self, layout)
        if layout.inputs is not None and self.tokens is None:
            problems.append("the store carries its inputs but the shard has no input_ids / loss_mask")
        elif layout.inputs is None and self.tokens is not None:
            problems.append("input_ids are present but the store's layout has no place for them")
        elif self.tokens is not None and not problems:
            problems += self.tokens.problems(self, layout)
        if problems:
            raise ShardDataError("; ".join(problems))

    def _base_problems(self, layout: StoreLayout) -> list[str]:
        problems = []
        s, o, k, t = self.sample_id, self.position_offsets, layout.top_k, len(layout.temperatures)
        if s.dtype != np.int64 or s.ndim != 1 or s.shape[0] == 0:
            problems.append(f"sample_id must be a non-empty int64 vector, got {s.dtype} {s.shape}")
        elif s.shape[0] > 1 and not np.all(np.diff(s) > 0):
            problems.append("sample_id must be strictly increasing (sorted, no duplicates)")
        if o.dtype != np.int64 or o.shape != (s.shape[0] + 1,):
            problems.append(f"position_offsets must be int64 [{s.shape[0] + 1}], got {o.dtype} {o.shape}")
        elif o[0] != 0 or np.any(np.diff(o) < 0) or o[-1] != self.topk_index.shape[0]:
            problems.append("position_offsets must start at 0, never decrease and end at the position count")
        p = self.topk_index.shape[0]
        if layout.selection.adaptive and self.topk_index.ndim == 2 and 1 <= self.topk_index.shape[1] <= k:
            k = self.topk_index.shape[1]  # an adaptive head: as wide as its positions need (top_k at most)
        if self.topk_index.dtype != np.dtype(layout.index_dtype) or self.topk_index.shape != (p, k):
            problems.append(
                f"topk_index must be {layout.index_dtype} [P, {k}], got {self.topk_index.dtype} {self.topk_index.shape}"
            )
        elif p and int(self.topk_index.max()) >= layout.vocab_size:
            problems.append(f"topk_index holds a class id >= vocabulary size {layout.vocab_size}")
        logit = self.topk_logit
        if logit.dtype != np.float32 or logit.shape != (p, k):
            problems.append(f"topk_logit must be float32 [{p}, {k}], got {logit.dtype} {logit.shape}")
        elif not np.all(np.isfinite(logit)):
            problems.append("topk_logit holds NaN or inf")
        elif k > 1 and self.ordered and np.any(np.diff(logit, axis=1) > 0):
            problems.append("topk_logit must be sorted by descending logit within each position")
        elif k > 1 and not self.ordered and p and np.any(logit[:, :1] < logit):
            problems.append("column 0 of topk_logit must hold each position's largest logit")
        if self.logsumexp.dtype != np.float32 or self.logsumexp.shape != (p, t):
            problems.append(f"logsumexp must be float32 [{p}, {t}], got {self.logsumexp.dtype} {self.logsumexp.shape}")
        elif not np.all(np.isfinite(self.logsumexp)):
            problems.append("logsumexp holds NaN or inf")
        return problems

    def equals(self, other: ShardData) -> bool:
        """Exact equality of content (names, dtypes and shapes included)."""
        a, b = self.arrays(), other.arrays()
        return a.keys() == b.keys() and all(
            a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and np.array_equal(a[n], b[n]) for n in a
        )

    def select(self, rows: np.ndarray) -> ShardData:
        """The samples at `rows` (indices into this shard), in that order, positions kept together."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.position_offsets[rows], self.position_offsets[rows + 1]
        offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        pos = positions_between(starts, ends)
        taken = {name: a[pos] for name, a in self.per_position().items()}
        return ShardData(
            self.sample_id[rows],
            offsets,
            taken.pop("topk_index"),
            taken.pop("topk_logit"),
            taken.pop("logsumexp"),
            extras=taken,
            ordered=self.ordered,
            tokens=None if self.tokens is None else self.tokens.select(rows),
        )

    @staticmethod
    def concat(parts: list[ShardData]) -> ShardData:
        """The samples of `parts` one after another (padded extras widened to the widest part)."""
        if len(parts) == 1:
            return parts[0]
        sizes = np.cumsum([0] + [p.num_positions for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.position_offsets[1:] + n for p, n in zip(parts, sizes)]).astype(np.int64)
        if "topk_count" in parts[0].extras:  # adaptive heads: each shard as wide as it needs
            width = max(p.top_k for p in parts)
            parts = [pad_head(p, width) for p in parts]
        arrays = {}
        for name in parts[0].per_position():
            columns = [p.per_position()[name] for p in parts]
            if name in EXTRAS and EXTRAS[name].padded:
                width = max(c.shape[1] for c in columns)
                columns = [pad_width(c, width) for c in columns]
            arrays[name] = np.concatenate(columns)
        return ShardData(
            np.concatenate([p.sample_id for p in parts]),
            offsets,
            arrays.pop("topk_index"),
            arrays.pop("topk_logit"),
            arrays.pop("logsumexp"),
            extras=arrays,
            ordered=parts[0].ordered,
            tokens=None if parts[0].tokens is None else TokenInputs.concat([p.tokens for p in parts]),
        )


def adaptive_head_sizes(cumulative_mass: np.ndarray, top_p: float, min_k: int) -> np.ndarray:
    """FORMAT.md's adaptive rule: cumulative_mass [P, k] (of the top-k by descending logit, at T = 1)
    -> [P] the fewest classes reaching top_p, at least min_k, at most k."""
    count = (cumulative_mass < top_p).sum(axis=1) + 1
    return np.clip(count, min_k, cumulative_mass.shape[1])


def head_mask(count: np.ndarray, width: int) -> np.ndarray:
    """bool [P, width]: True where a column holds one of the position's `count` [P] stored classes."""
    return np.arange(width) < np.asarray(count)[:, None]


def with_canonical_padding(data: ShardData) -> ShardData:
    """An adaptive shard with its padding entries as FORMAT.md says a reader returns them: the
    position's column-0 id and its smallest stored logit (a fixed-k shard is returned as it is)."""
    count = data.extras.get("topk_count")
    if count is None or data.num_positions == 0:
        return data
    pad = ~head_mask(count, data.top_k)
    index = np.where(pad, data.topk_index[:, :1], data.topk_index)
    smallest = np.where(pad, np.inf, data.topk_logit).min(axis=1, keepdims=True).astype(np.float32)
    logit = np.where(pad, smallest, data.topk_logit)
    return replace(data, topk_index=index, topk_logit=logit)


def pad_head(data: ShardData, width: int) -> ShardData:
    """An adaptive shard's head widened to `width` columns with padding entries as FORMAT.md says
    (the position's column-0 id, its smallest stored logit), as the reader pads within a shard."""
    extra = width - data.top_k
    if extra <= 0:
        return data
    index = np.concatenate([data.topk_index, np.repeat(data.topk_index[:, :1], extra, axis=1)], axis=1)
    smallest = data.topk_logit.min(axis=1, keepdims=True) if data.num_positions else data.topk_logit[:, :1]
    logit = np.concatenate([data.topk_logit, np.repeat(smallest, extra, axis=1)], axis=1)
    return replace(data, topk_index=index, topk_logit=logit)


def positions_between(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The rows starts[i]:ends[i] of every i, concatenated (vectorised: no Python loop over samples)."""
    lengths = ends - starts
    if lengths.size and np.all(lengths == 1):
        return np.asarray(starts, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Each row's position within its run, plus its run's start.
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total, dtype=np.int64) - first)


def pad_width(array: np.ndarray, width: int) -> np.ndarray:
    """A [P, w] array widened to `width` columns with zeros (count 0 marks padding in sample arrays)."""
    extra = width - array.shape[-1]
    if extra <= 0:
        return array
    return np.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, extra)])


def trim_samples(index: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the columns that are padding at every position (rows are sorted by descending count)."""
    width = max(1, int((count > 0).sum(axis=-1).max())) if count.size else 1
    return np.ascontiguousarray(index[..., :width]), np.ascontiguousarray(count[..., :width])
