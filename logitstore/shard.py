"""The in-memory form of one shard: what every backend writes and reads back.

Positions are stored flat with CSR-style offsets so that a sample may have any number of
positions (one for a classifier, one per token for a sequence model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from logitstore.errors import ShardDataError

INDEX_DTYPES = ("uint16", "uint32")
VALUE_DTYPE = "float32"


def index_dtype_for(vocab_size: int) -> str:
    """Narrowest index dtype that holds every class index of a vocabulary."""
    if vocab_size <= 0:
        raise ShardDataError(f"vocabulary size must be positive, got {vocab_size}")
    return "uint16" if vocab_size <= 2**16 else "uint32"


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
    and, when the logits were stored quantized (their head sum is then too coarse for the tail):
      rest_mass        float32 [P, R]  the tail mass 1 - sum_i p_i(T_r) of the stored classes (from the exact logits)
    and, for the `sample` and `hybrid` selections only (m = draws per position):
      sample_index     uint16|uint32 [P, w]  distinct drawn class ids, by descending count
      sample_count     uint16 [P, w]         how often each was drawn (0 = padding)
    and, for stores of augmented views (V views per sample, position v of a sample is view v):
      view_seed        int64 [P]             the seed the teacher's input of that view was augmented with
    where w <= min(m, vocabulary) is the most distinct ids drawn at any position of the shard.
    """

    sample_id: np.ndarray
    position_offsets: np.ndarray
    topk_index: np.ndarray
    topk_logit: np.ndarray
    logsumexp: np.ndarray
    sample_index: np.ndarray | None = None
    sample_count: np.ndarray | None = None
    rest_mass: np.ndarray | None = None
    view_seed: np.ndarray | None = None
    ordered: bool = True

    @property
    def has_samples(self) -> bool:
        return self.sample_index is not None

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

    def validate(self, *, top_k: int, num_temperatures: int, index_dtype: str, vocab_size: int, draws: int = 0,
                 views: int = 0) -> None:
        """Raise ShardDataError if this shard breaks the format's rules (draws = 0: no sample arrays;
        views = 0: no view seeds)."""
        problems = []
        s = self.sample_id
        if s.dtype != np.int64 or s.ndim != 1 or s.shape[0] == 0:
            problems.append(f"sample_id must be a non-empty int64 vector, got {s.dtype} {s.shape}")
        elif s.shape[0] > 1 and not np.all(np.diff(s) > 0):
            problems.append("sample_id must be strictly increasing (sorted, no duplicates)")
        o = self.position_offsets
        if o.dtype != np.int64 or o.shape != (s.shape[0] + 1,):
            problems.append(f"position_offsets must be int64 [{s.shape[0] + 1}], got {o.dtype} {o.shape}")
        elif o[0] != 0 or np.any(np.diff(o) < 0) or o[-1] != self.topk_index.shape[0]:
            problems.append("position_offsets must start at 0, never decrease and end at the position count")
        p = self.topk_index.shape[0]
        if self.topk_index.dtype != np.dtype(index_dtype) or self.topk_index.shape != (p, top_k):
            problems.append(
                f"topk_index must be {index_dtype} [P, {top_k}], got {self.topk_index.dtype} {self.topk_index.shape}"
            )
        elif p and int(self.topk_index.max()) >= vocab_size:
            problems.append(f"topk_index holds a class id >= vocabulary size {vocab_size}")
        if self.topk_logit.dtype != np.float32 or self.topk_logit.shape != (p, top_k):
            problems.append(f"topk_logit must be float32 [{p}, {top_k}], got {self.topk_logit.dtype} {self.topk_logit.shape}")
        elif not np.all(np.isfinite(self.topk_logit)):
            problems.append("topk_logit holds NaN or inf")
        elif top_k > 1 and self.ordered and np.any(np.diff(self.topk_logit, axis=1) > 0):
            problems.append("topk_logit must be sorted by descending logit within each position")
        elif top_k > 1 and not self.ordered and p and np.any(self.topk_logit[:, :1] < self.topk_logit):
            problems.append("column 0 of topk_logit must hold each position's largest logit")
        if self.rest_mass is not None:
            r = self.rest_mass
            if r.dtype != np.float32 or r.shape != (p, num_temperatures):
                problems.append(f"rest_mass must be float32 [{p}, {num_temperatures}], got {r.dtype} {r.shape}")
            elif not np.all((r >= 0) & (r <= 1)):
                problems.append("rest_mass must lie in [0, 1]")
        if self.logsumexp.dtype != np.float32 or self.logsumexp.shape != (p, num_temperatures):
            problems.append(
                f"logsumexp must be float32 [{p}, {num_temperatures}], got {self.logsumexp.dtype} {self.logsumexp.shape}"
            )
        elif not np.all(np.isfinite(self.logsumexp)):
            problems.append("logsumexp holds NaN or inf")
        if draws == 0 and self.has_samples:
            problems.append("sample arrays are present but the store's selection draws none")
        elif draws:
            si, sc = self.sample_index, self.sample_count
            if si is None or sc is None:
                problems.append(f"sample_index and sample_count are required ({draws} draws per position)")
            elif si.dtype != np.dtype(index_dtype) or sc.dtype != np.uint16 or si.ndim != 2 or si.shape != sc.shape \
                    or si.shape[0] != p or not 1 <= si.shape[1] <= min(draws, vocab_size):
                problems.append(f"sample_index must be {index_dtype} and sample_count uint16, both [{p}, w] with 1 <= w <= {min(draws, vocab_size)}")
            elif p and (int(si.max()) >= vocab_size or np.any(sc.astype(np.int64).sum(axis=1) != draws)):
                problems.append(f"sample arrays must hold class ids < {vocab_size} whose counts sum to {draws} per position")
        if views == 0 and self.view_seed is not None:
            problems.append("view_seed is present but the store holds no views")
        elif views:
            v = self.view_seed
            if v is None or v.dtype != np.int64 or v.shape != (p,):
                problems.append(f"view_seed must be int64 [{p}] ({views} views per sample)")
            if o.shape == (s.shape[0] + 1,) and np.any(np.diff(o) != views):
                problems.append(f"every sample must hold exactly {views} positions (one per view)")
        if problems:
            raise ShardDataError("; ".join(problems))

    def equals(self, other: "ShardData") -> bool:
        """Exact equality of content (dtypes included)."""
        return self.has_samples == other.has_samples and (self.rest_mass is None) == (other.rest_mass is None) and \
            (self.view_seed is None) == (other.view_seed is None) and all(
            a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            for a, b in zip(self.arrays(), other.arrays())
        )

    def arrays(self) -> tuple[np.ndarray, ...]:
        base = (self.sample_id, self.position_offsets, self.topk_index, self.topk_logit, self.logsumexp)
        return base + ((self.sample_index, self.sample_count) if self.has_samples else ()) + (
            (self.rest_mass,) if self.rest_mass is not None else ()) + ((self.view_seed,) if self.view_seed is not None else ())

    def select(self, rows: np.ndarray) -> "ShardData":
        """The samples at `rows` (indices into this shard), in that order, positions kept together."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.position_offsets[rows], self.position_offsets[rows + 1]
        lengths = ends - starts
        offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if lengths.size and np.all(lengths == 1):
            pos = starts
        else:
            pos = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)]) if rows.size else np.zeros(0, np.int64)
        return ShardData(
            sample_id=self.sample_id[rows],
            position_offsets=offsets,
            topk_index=self.topk_index[pos],
            topk_logit=self.topk_logit[pos],
            logsumexp=self.logsumexp[pos],
            sample_index=self.sample_index[pos] if self.has_samples else None,
            sample_count=self.sample_count[pos] if self.has_samples else None,
            rest_mass=self.rest_mass[pos] if self.rest_mass is not None else None,
            view_seed=self.view_seed[pos] if self.view_seed is not None else None,
            ordered=self.ordered,
        )


def pad_samples(index: np.ndarray, count: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample arrays widened to `width` columns with count-0 padding (widths differ between shards)."""
    extra = width - index.shape[-1]
    if extra <= 0:
        return index, count
    pad = [(0, 0)] * (index.ndim - 1) + [(0, extra)]
    return np.pad(index, pad), np.pad(count, pad)


def trim_samples(index: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the columns that are padding at every position (rows are sorted by descending count)."""
    width = max(1, int((count > 0).sum(axis=-1).max())) if count.size else 1
    return np.ascontiguousarray(index[..., :width]), np.ascontiguousarray(count[..., :width])
