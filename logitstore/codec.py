"""Codecs: how a shard's top-k arrays are encoded on disk (FORMAT.md, "Codecs").

A codec turns a ShardData into named arrays that a backend stores, and back. Two independent
choices, recorded in the manifest's `codec` object:

  index  "plain"  class ids as given (descending teacher logit)
         "delta"  class ids sorted ascending and stored as gaps (id_j - id_{j-1} - 1): small numbers
                  that compress well. The loss does not depend on the order of the k entries, so
                  this costs nothing; on reading, the top-1 is moved to column 0.
  values "float32" raw logits and log-normalisers, exact
         "logq"   the gap of each logit to the top-1, g = z_1 - z_i >= 0, through a compander
                  whose step grows with g exactly as fast as the entry's weight in the KL falls,
                  at every temperature of the manifest's range, then rounded to `bits` bits; plus
                  the tail mass per temperature from the exact logits (its log, float16),
                  because 1 - sum(head) of a quantized head is noise when the tail is small.

Every array stored has one row per position (its leading axis) except `sample_id` [S] and
`position_offsets` [S+1], and, in an adaptive top-k store (a `topk_count` per position), the
arrays of PER_ENTRY: packed to the entries each position holds, with `entry_offsets` [S+1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from logitstore.backends.arrays import ENTRY_OFFSETS, PER_ENTRY
from logitstore.errors import ShardCorruptError
from logitstore.shard import EXTRAS, TOKEN_ARRAYS, ShardData, TokenInputs, head_mask, with_canonical_padding

INDEX_CODECS = ("plain", "delta")
VALUE_CODECS = ("float32", "logq")
_HI_DTYPE = {"uint16": np.uint8, "uint32": np.uint32}  # the gap's bits above the low byte
_INDEX_DTYPE = {"uint8": "uint16", "uint32": "uint32"}
_INDEX_DTYPES = ("uint16", "uint32")  # class and token ids: which one, the layout says (ShardData.validate)
# The dtype of every array a shard stores whatever its codec (FORMAT.md), checked before decoding:
# a decoder converts, so a wrong dtype would otherwise pass for the right one.
_STORED_DTYPES: dict[str, tuple[str, ...]] = {
    "sample_id": ("int64",),
    "position_offsets": ("int64",),
    "token_offsets": ("int64",),
    ENTRY_OFFSETS: ("int64",),
    "topk_index": _INDEX_DTYPES,
    "sample_index": _INDEX_DTYPES,
    "input_ids": _INDEX_DTYPES,
    "sample_count": ("uint16",),
    "topk_count": ("uint16",),
    "view_seed": ("int64",),
    "feature_code": ("int8",),
    "feature_scale": ("float32",),
    "loss_mask": ("uint8",),
    "topk_index_gap_lo": ("uint8",),
    "topk_index_gap_hi": tuple(_INDEX_DTYPE),
    "topk_logit": ("float32",),
    "logsumexp": ("float32",),
    "top1_logit": ("float32",),
    "top1_logprob": ("float16",),
    "log_rest": ("float16",),
}


@dataclass(frozen=True)
class Codec:
    index: str = "plain"
    values: str = "float32"
    bits: int = 0  # logq only: bits per quantized gap (1..16)
    # logq only: the store's recorded temperatures (the tail mass is kept for each; the quantizer
    # is tuned for their range)
    temperatures: tuple[float, ...] = ()

    @staticmethod
    def make(index: str = "plain", values: str = "float32", bits: int = 0, temperatures=()) -> Codec:
        if values != "logq":
            return Codec(index=index, values=values)
        temps = tuple(float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else t for t in temperatures)
        return Codec(index=index, values=values, bits=bits, temperatures=temps)

    @property
    def t_min(self) -> float:
        return min(self.temperatures)

    @property
    def t_max(self) -> float:
        return max(self.temperatures)

    @property
    def is_default(self) -> bool:
        return self.index == "plain" and self.values == "float32"

    @property
    def lossless(self) -> bool:
        return self.values == "float32"

    def problems(self) -> list[str]:
        out = []
        if self.index not in INDEX_CODECS:
            out.append(f"index codec {self.index!r} is unknown (use {' or '.join(INDEX_CODECS)})")
        if self.values not in VALUE_CODECS:
            out.append(f"value codec {self.values!r} is unknown (use {' or '.join(VALUE_CODECS)})")
        if self.values == "logq":
            if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 16:
                out.append(f"logq bits must be 1..16, got {self.bits!r}")
            numbers = all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in self.temperatures)
            if not self.temperatures or not numbers or not all(0 < t < math.inf for t in self.temperatures):
                out.append(f"logq needs positive recorded temperatures, got {list(self.temperatures)}")
        return out

    def to_json(self) -> dict:
        out = {"index": self.index, "values": self.values}
        if self.values == "logq":
            out["bits"] = self.bits
        return out

    @staticmethod
    def from_json(obj: dict, temperatures) -> Codec:
        """The manifest's `codec` object (absent: plain/float32) with the manifest's temperatures;
        values are kept as found (`problems()` says what is wrong with them)."""
        return Codec.make(
            str(obj.get("index", "plain")), str(obj.get("values", "float32")), obj.get("bits", 0), temperatures
        )

    # ---- the logq quantizer -------------------------------------------------------------
    @cached_property
    def _compander(self) -> Compander:
        return Compander(self.t_min, self.t_max, self.bits)

    # ---- encode / decode ----------------------------------------------------------------
    def encode(self, data: ShardData) -> dict[str, np.ndarray]:
        """ShardData (top-k sorted by descending logit) -> the arrays a backend stores."""
        count = data.extras.get("topk_count")
        mask = None if count is None else head_mask(count, data.top_k)
        out = self._encode_entries(data, mask)
        if mask is not None:  # adaptive top-k: keep each position's own entries only
            out.update({name: out[name][mask] for name in PER_ENTRY if name in out})
            entries_before = np.concatenate([[0], np.cumsum(count, dtype=np.int64)])  # [P+1]
            out[ENTRY_OFFSETS] = entries_before[data.position_offsets]  # [S+1]: a sample's entries
        # The extras (sample arrays, view seeds, counts) are stored as they are; derived ones are not stored.
        out.update({name: a for name, a in data.extras.items() if EXTRAS[name].stored})
        # So are the tokens of a store that carries its inputs.
        tokens = data.tokens.arrays() if data.tokens is not None else {}
        return {"sample_id": data.sample_id, "position_offsets": data.position_offsets, **out, **tokens}

    def _encode_entries(self, data: ShardData, mask: np.ndarray | None) -> dict[str, np.ndarray]:
        """The codec's arrays of the top-k head, [P, k] (`mask`: the stored columns of an adaptive head)."""
        index, logit = data.topk_index, data.topk_logit
        out: dict[str, np.ndarray] = {}
        values: np.ndarray | None = None  # what rides along with the ids: codes or logits
        if self.values == "float32":
            values = logit
        else:
            top1 = logit[:, 0]
            values = self._compander.encode(top1[:, None] - logit)
            # Code 0 is the top-1's alone, so a reader finds the teacher's top-1 exactly even when
            # another logit lies within a step of it (that one gets code 1: at most a step off).
            np.maximum(values[:, 1:], 1, out=values[:, 1:])
            temps = np.asarray(self.temperatures, dtype=np.float64)
            with np.errstate(divide="ignore"):
                log_rest = np.log(_rest_mass(logit, data.logsumexp, self.temperatures, mask))  # -inf: k = V
            out.update(
                top1_logit=top1,
                top1_logprob=(top1[:, None].astype(np.float64) / temps - data.logsumexp).astype(np.float16),
                log_rest=log_rest.astype(np.float16),
            )
        if self.index == "delta":
            index, values = _sort_by_id(index, values, mask)
            gaps = np.diff(index.astype(np.int64), axis=1, prepend=-1) - 1
            # Low byte and the rest apart: most gaps are < 256, so the high plane is nearly all
            # zeros and each plane compresses far better than the interleaved bytes.
            out.update(
                topk_index_gap_lo=(gaps & 0xFF).astype(np.uint8),
                topk_index_gap_hi=(gaps >> 8).astype(_HI_DTYPE[str(index.dtype)]),
            )
        else:
            out["topk_index"] = index
        if self.values == "float32":
            out.update(topk_logit=values, logsumexp=data.logsumexp)
        else:
            out["topk_code"] = values
        return out

    def decode(self, arrays: dict[str, np.ndarray], width: int | None = None) -> ShardData:
        """The arrays a backend read -> ShardData (column 0 is the top-1; the other columns are in
        descending logit order for the plain index codec, ascending class id for delta). An
        adaptive shard's entries are unpacked to as many columns as its positions hold at most,
        padding as FORMAT.md says; `width` (the store's top_k; None: no limit) bounds that: a
        shard holding more is damaged. So the width of what a reader returns is bounded by what
        the shard holds, never by the manifest alone."""
        try:
            self._check_dtypes(arrays)
            if "topk_count" not in arrays:
                return self._decode(arrays)
            return with_canonical_padding(self._decode(self._unpacked(arrays, width)))
        except KeyError as exc:
            raise ShardCorruptError(f"shard lacks array {exc.args[0]!r} that codec {self.to_json()} stores") from None

    def _check_dtypes(self, arrays: dict[str, np.ndarray]) -> None:
        """Every stored array's dtype is the one the format gives it (checked before any is decoded)."""
        for name, array in arrays.items():
            if name == "topk_code":
                wanted = (np.dtype(self._compander.dtype).name,) if self.values == "logq" else None
            else:
                wanted = _STORED_DTYPES.get(name)
            if wanted is None:
                continue  # not an array this codec reads
            found = str(getattr(array, "dtype", type(array).__name__))
            if found not in wanted:
                raise ShardCorruptError(
                    f"shard array {name} has dtype {found}, where the format stores {' or '.join(wanted)} (the "
                    "store is damaged; dump it again)"
                )

    def _unpacked(self, arrays: dict[str, np.ndarray], limit: int | None) -> dict[str, np.ndarray]:
        """Packed per-entry arrays -> [P, w], w the most entries a position of the shard holds (at
        most `limit`), padded so that no padding entry can pass for the top-1 (the largest logit, the
        smallest code) and delta gaps stay in range."""
        count = arrays["topk_count"]
        width = max(1, int(count.max())) if count.size else 1
        if limit is not None and width > limit:
            raise ShardCorruptError(f"topk_count holds {width} entries, more than top_k {limit}")
        mask = head_mask(count, width)
        out = {name: a for name, a in arrays.items() if name not in PER_ENTRY and name != ENTRY_OFFSETS}
        for name in PER_ENTRY:
            if name not in arrays:
                continue
            packed = arrays[name]
            if packed.ndim != 1 or packed.shape[0] != int(mask.sum()):
                raise ShardCorruptError(
                    f"packed {name} holds {packed.shape} entries, topk_count says {int(mask.sum())}"
                )
            fill = -np.inf if name == "topk_logit" else self._compander.levels - 1 if name == "topk_code" else 0
            full = np.full(mask.shape, fill, dtype=packed.dtype)
            full[mask] = packed
            out[name] = full
        return out

    def _decode(self, arrays: dict[str, np.ndarray]) -> ShardData:
        # Every step below is one vectorised pass; the profile of bench/store.py is in BENCHMARKS.md.
        rest = None
        if self.values == "float32":
            logit, lse = arrays["topk_logit"], arrays["logsumexp"]
        else:
            codes, top1 = arrays["topk_code"], arrays["top1_logit"]
            logit = np.take(self._compander.table, codes)
            np.subtract(top1[:, None], logit, out=logit)
            temps = np.asarray(self.temperatures, dtype=np.float32)
            lse = top1[:, None] / temps - arrays["top1_logprob"].astype(np.float32)
            rest = np.exp(arrays["log_rest"].astype(np.float32))
        if self.index == "delta":
            hi = arrays["topk_index_gap_hi"]
            dtype = np.dtype(_INDEX_DTYPE[str(hi.dtype)])
            gaps = arrays["topk_index_gap_lo"].astype(np.uint32)
            if hi.any():
                gaps |= hi.astype(np.uint32) << 8
            gaps += 1
            # id_j = sum_{i<=j} (gap_i + 1) - 1. Checksums catch damaged bytes before this; the
            # range check after it catches a writer's bug.
            index = np.cumsum(gaps, axis=1, dtype=np.uint32)
            index -= 1
            if index.shape[0] and index.shape[1] > 1:
                best = codes.argmin(axis=1) if self.values == "logq" else logit.argmax(axis=1)
                _swap_into_column_0(index, best)
                logit = np.array(logit, dtype=np.float32, copy=not logit.flags.writeable)
                _swap_into_column_0(logit, best)
            index = index.astype(dtype)
        else:
            index = arrays["topk_index"]
        extras = {name: arrays[name] for name, rule in EXTRAS.items() if rule.stored and name in arrays}
        if rest is not None:
            extras["rest_mass"] = rest
        return ShardData(
            sample_id=arrays["sample_id"],
            position_offsets=arrays["position_offsets"],
            topk_index=index,
            topk_logit=np.ascontiguousarray(logit, dtype=np.float32),
            logsumexp=lse,
            extras=extras,
            ordered=self.index == "plain",
            tokens=TokenInputs(*(arrays[name] for name in TOKEN_ARRAYS)) if "input_ids" in arrays else None,
        )


def _swap_into_column_0(a: np.ndarray, column: np.ndarray) -> None:
    """In place: each row's entry at `column[row]` trades places with its column 0."""
    rows = np.arange(a.shape[0])
    first = a[:, 0].copy()
    a[:, 0] = a[rows, column]
    a[rows, column] = first


def _sort_by_id(index: np.ndarray, values: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ids ascending, with their values alongside (`mask`: the columns that are entries;
    the others sort after them)."""
    if mask is not None:
        order = np.argsort(np.where(mask, index.astype(np.int64), np.int64(1) << 40), axis=1, kind="stable")
        return np.take_along_axis(index, order, axis=1), np.take_along_axis(values, order, axis=1)
    if values.dtype.kind == "u" and values.itemsize <= 2 and index.dtype == np.uint16:
        # Small integer codes: sort one packed key (id << 16 | code) instead of an argsort and two gathers.
        key = (index.astype(np.uint32) << 16) | values
        key.sort(axis=1)
        return (key >> 16).astype(np.uint16), (key & 0xFFFF).astype(values.dtype)
    order = np.argsort(index, axis=1, kind="stable")
    return np.take_along_axis(index, order, axis=1), np.take_along_axis(values, order, axis=1)


def _rest_mass(
    topk_logit: np.ndarray, logsumexp: np.ndarray, temperatures: list[float], mask: np.ndarray | None = None
) -> np.ndarray:
    """Tail mass 1 - sum_i p_i(T_r) of the stored classes (`mask`: the columns that are stored),
    float64 [P, R]: float32 terms (relative error 1e-7 each), summed in float64, so the tail is
    right to ~1e-7 absolute."""
    out = np.empty(logsumexp.shape, dtype=np.float64)
    for r, t in enumerate(temperatures):
        terms = np.exp(topk_logit * np.float32(1.0 / t) - logsumexp[:, r : r + 1])
        if mask is not None:
            terms = np.where(mask, terms, np.float32(0))
        out[:, r] = np.clip(1.0 - terms.sum(axis=1, dtype=np.float64), 0.0, 1.0)
    return out


class Compander:
    """Gap g = z_1 - z_i >= 0 (raw logit units) <-> code in [0, 2^bits).

    KL(p || p_hat) ~ 1/2 sum_i p_i(T) (err_i / T)^2 and p_i(T) <= exp(-g_i / T), so an entry may
    carry an error that grows like delta(g) = min over T in [t_min, t_max] of T exp(g / 2T). f is
    the integral of 1/delta: uniform steps in f give every entry the same worst-case share of the
    KL at every temperature of the range. f(0) = 0, f increases to f_max = 2 + (2/e) ln(t_max/t_min).
    """

    def __init__(self, t_min: float, t_max: float, bits: int) -> None:
        self.a, self.b, self.bits = t_min, t_max, bits
        self.f_max = 2.0 + (2.0 / math.e) * math.log(t_max / t_min)
        self.levels = 2**bits
        self.step = self.f_max / self.levels
        self.dtype = np.uint8 if bits <= 8 else np.uint16
        codes = np.arange(self.levels, dtype=np.float64)
        self.table = self.inverse(codes * self.step).astype(np.float32)  # code -> reconstructed gap

    def forward(self, g: np.ndarray) -> np.ndarray:
        """f(g), in g's float precision (float32 gives codes right to ~1e-6 of a step)."""
        a, b, e = self.a, self.b, math.e
        g = np.asarray(g)
        g = np.maximum(g, 0.0, dtype=g.dtype if g.dtype.kind == "f" else np.float64)
        f = np.exp(np.minimum(g, 2 * a) * (-1 / (2 * a)))
        f = 2.0 - 2.0 * f
        f += (2.0 / e) * np.log(np.clip(g, 2 * a, 2 * b) * (1 / (2 * a)))
        f += 2.0 * (1.0 / e - np.exp(np.maximum(g, 2 * b) * (-1 / (2 * b))))
        return f

    def inverse(self, f: np.ndarray) -> np.ndarray:
        a, b, e = self.a, self.b, math.e
        f1_end = 2.0 * (1.0 - 1.0 / e)
        f2_end = f1_end + (2.0 / e) * math.log(b / a)
        f = np.asarray(f, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            g1 = -2 * a * np.log1p(-np.minimum(f, f1_end) / 2.0)
            g2 = 2 * a * np.exp((np.clip(f, f1_end, f2_end) - f1_end) * e / 2.0)
            g3 = -2 * b * np.log(np.maximum(1.0 / e - (f - f2_end) / 2.0, 1e-300))
        return np.where(f <= f1_end, g1, np.where(f <= f2_end, g2, g3))

    def encode(self, gaps: np.ndarray) -> np.ndarray:
        codes = np.rint(self.forward(gaps) * (1 / self.step))
        return np.minimum(codes, self.levels - 1).astype(self.dtype)
