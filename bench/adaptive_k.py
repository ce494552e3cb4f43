"""Adaptive top-k (--top-p) against fixed k on the LM example: bytes per token and KL distortion.

    python -m bench.adaptive_k [--teacher stdlib-gpt] [--quick] [--json PATH]

The teacher (a built-in LM of the example, trained once and cached) runs once over
stdlib-small-eval. From its outputs, one store per setting is written with the store's own writer
(zarr, the headline codec delta/logq8, and exact plain/float32): fixed k in 1..64 and adaptive
heads of mass p at T=1 (--top-p p, --max-k 64). For each:
  k mean         classes stored per position
  B/token        bytes on disk / positions, everything included (ids, values, normalisers, counts)
  KL at T        mean per position of KL(teacher's full softmax at T || what the store keeps: the
                 stored classes exactly, the rest mass spread evenly over the classes not stored),
                 in float64 from the teacher's fp32 logits; T = 1 and 2
Then each adaptive setting is compared with fixed k at equal bytes (the KL fixed k reaches with
those bytes, interpolated log-log between neighbouring k) and at equal KL (the bytes fixed k needs
for that KL at T=1): ratios > 1 favour adaptive.
--quick (CI): the byte-level teacher trained for a few steps, a quarter of the text.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import markdown_table, write_json
from bench.store import SHARD_SIZE, TEMPERATURES, eval_logits, shards_of, write_store
from logitstore import index_dtype_for, read_manifest
from logitstore.codec import Codec
from logitstore.layout import Selection
from logitstore.shard import ShardData, adaptive_head_sizes
from logitstore.testing import with_extras
from trainer.builtin.stdlib import example
from trainer.inputs.datasets import TEXT_PARTS

MAX_K = 64
FIXED_K = (1, 2, 4, 8, 16, 32, 64)
TOP_P = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99)
KL_TEMPERATURES = (1.0, 2.0)
CODECS = {"delta/logq8": Codec.make("delta", "logq", 8, TEMPERATURES), "plain/float32": Codec()}


def teacher_pass(name: str, parts: int, quick: bool) -> dict:
    """The teacher over stdlib-small-eval -> its top-MAX_K, logsumexp at TEMPERATURES, the
    cumulative mass of the sorted head at T = 1, and per T the KL of every head size [P, MAX_K]."""
    vocab = example.TEACHERS[name].teacher.vocab_size
    k = min(MAX_K, vocab)
    lengths, batches = eval_logits(name, parts, quick, batch=16)
    keep: dict[str, list] = {"values": [], "index": [], "lse": [], "cum_p1": []}
    kl_parts: dict[float, list] = {t: [] for t in KL_TEMPERATURES}
    with torch.inference_mode():
        for z in batches:
            z = z.double()
            v, i = z.topk(k, dim=-1)
            keep["values"].append(v.float().numpy())
            keep["index"].append(i.numpy())
            keep["lse"].append(torch.stack([torch.logsumexp(z / t, dim=-1) for t in TEMPERATURES], dim=1).numpy())
            keep["cum_p1"].append(torch.exp(v - z.logsumexp(-1, keepdim=True)).cumsum(-1).numpy())
            for t in KL_TEMPERATURES:
                kl_parts[t].append(_kl_by_head_size(z, t, k).numpy())
    out = {key: np.concatenate(value) for key, value in keep.items()}
    out.update(lengths=lengths, vocab=vocab)
    out["index"] = out["index"].astype(index_dtype_for(vocab))
    out["kl"] = {t: np.concatenate(value) for t, value in kl_parts.items()}  # [P, k] per T: column c-1 = head size c
    return out


def _kl_by_head_size(z: torch.Tensor, t: float, k: int) -> torch.Tensor:
    """z [N, V] float64 -> [N, k]: column c-1 is KL(p_T || the top-c head exact + the rest spread
    evenly over the V - c others)."""
    log_p = torch.log_softmax(z / t, dim=-1)
    log_p_sorted = log_p.sort(dim=-1, descending=True).values
    p = log_p_sorted.exp()
    plogp = torch.where(p > 0, p * log_p_sorted, 0.0)
    tail_plogp = plogp.sum(-1, keepdim=True) - plogp.cumsum(-1)[:, :k]  # sum over classes beyond c
    rest = (1.0 - p.cumsum(-1)[:, :k]).clamp(min=0.0)
    others = z.shape[1] - torch.arange(1, k + 1, dtype=z.dtype)
    spread = torch.where(rest > 0, rest * torch.log(rest.clamp(min=1e-300) / others.clamp(min=1)), 0.0)
    return (tail_plogp - spread).clamp(min=0.0)


def settings(out: dict) -> list[tuple[str, float | None, np.ndarray]]:
    """(name, top_p or None, head size per position) of each store."""
    width = out["values"].shape[1]
    fixed = [(f"k={k}", None, np.full(len(out["values"]), k)) for k in FIXED_K if k <= width]
    return fixed + [(f"top-p {p:g}", p, adaptive_head_sizes(out["cum_p1"], p, 1)) for p in TOP_P]


def store_shards(out: dict, top_p: float | None, sizes: np.ndarray) -> list[ShardData]:
    base = dict(out)
    if top_p is None:
        k = int(sizes[0])
        base.update(values=out["values"][:, :k], index=out["index"][:, :k])
        return shards_of(base)
    shards, start = [], 0
    for shard in shards_of(base):
        n = shard.num_positions
        shards.append(with_extras(shard, topk_count=sizes[start : start + n].astype(np.uint16)))
        start += n
    return shards


def measure(out: dict, work: Path) -> list[dict]:
    rows = []
    for name, top_p, sizes in settings(out):
        row = {"setting": name, "top_p": top_p, "k_mean": float(sizes.mean())}
        for t in KL_TEMPERATURES:
            row[f"kl_t{t:g}"] = float(np.take_along_axis(out["kl"][t], sizes[:, None] - 1, axis=1).mean())
        for codec_name, codec in CODECS.items():
            root = work / f"{name}-{codec_name.replace('/', '-')}"
            selection = Selection(top_p=top_p, min_k=1) if top_p is not None else Selection()
            write_store(root, "zarr", codec, store_shards(out, top_p, sizes), out["vocab"], selection)
            m = read_manifest(root)
            row[f"bytes_{codec_name}"] = m.num_bytes / m.num_positions
            shutil.rmtree(root)
        rows.append(row)
        print(
            f"  {name}: k mean {row['k_mean']:.2f}, {row['bytes_delta/logq8']:.2f} B/token, KL(T=1) {row['kl_t1']:.3g}"
        )
    return rows


def _interp(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """y at x on the log-log polyline through (xs, ys) (xs increasing); clamped at the ends."""
    return float(np.exp(np.interp(np.log(x), np.log(xs), np.log(ys))))


def compare(rows: list[dict], codec: str) -> list[dict]:
    """Each adaptive row against fixed k at its bytes and at its KL (T = 1)."""
    fixed = sorted((r for r in rows if r["top_p"] is None), key=lambda r: r[f"bytes_{codec}"])
    fb = np.array([r[f"bytes_{codec}"] for r in fixed])
    out = []
    for r in (r for r in rows if r["top_p"] is not None):
        entry = {"setting": r["setting"], "k_mean": r["k_mean"], "bytes": r[f"bytes_{codec}"]}
        for t in KL_TEMPERATURES:
            fk = np.array([max(x[f"kl_t{t:g}"], 1e-12) for x in fixed])
            entry[f"kl_t{t:g}"] = r[f"kl_t{t:g}"]
            entry[f"fixed_kl_t{t:g}"] = _interp(entry["bytes"], fb, fk)
            entry[f"kl_ratio_t{t:g}"] = entry[f"fixed_kl_t{t:g}"] / max(r[f"kl_t{t:g}"], 1e-12)
        # KL falls as bytes grow: interpolate bytes on KL reversed (increasing)
        fk1 = np.array([max(x["kl_t1"], 1e-12) for x in fixed])
        entry["fixed_bytes_same_kl"] = _interp(max(r["kl_t1"], 1e-12), fk1[::-1], fb[::-1])
        entry["bytes_ratio"] = entry["fixed_bytes_same_kl"] / entry["bytes"]
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.adaptive_k", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="stdlib-gpt", choices=sorted(example.TEACHERS))
    parser.add_argument("--quick", action="store_true", help="CI: a briefly trained teacher, a quarter of the text")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    out = teacher_pass(args.teacher, TEXT_PARTS // 4 if args.quick else TEXT_PARTS, args.quick)
    print(f"{args.teacher}: {len(out['values'])} positions of stdlib-small-eval, V={out['vocab']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-adaptive-k-"))
    try:
        rows = measure(out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nFixed k vs adaptive top-p ({args.teacher}, shards of {SHARD_SIZE} blocks, zarr)\n")
    print(
        markdown_table(
            rows,
            [
                ("setting", "{}"),
                ("k_mean", "{:.2f}"),
                ("bytes_delta/logq8", "{:.2f}"),
                ("bytes_plain/float32", "{:.2f}"),
                ("kl_t1", "{:.2e}"),
                ("kl_t2", "{:.2e}"),
            ],
        )
    )
    comparison = compare(rows, "delta/logq8")
    print("\nAdaptive vs fixed k, delta/logq8 (ratios > 1 favour adaptive)\n")
    print(
        markdown_table(
            comparison,
            [
                ("setting", "{}"),
                ("bytes", "{:.2f}"),
                ("kl_t1", "{:.2e}"),
                ("fixed_kl_t1", "{:.2e}"),
                ("kl_ratio_t1", "{:.2f}"),
                ("kl_ratio_t2", "{:.2f}"),
                ("fixed_bytes_same_kl", "{:.2f}"),
                ("bytes_ratio", "{:.2f}"),
            ],
        )
    )
    best = max(comparison, key=lambda r: r["bytes_ratio"])
    figures = {"adaptive_bytes_ratio": best["bytes_ratio"], "adaptive_kl_ratio_t1": best["kl_ratio_t1"]}
    print(f"\nheadline ({best['setting']}): {json.dumps(figures)}")
    if args.json:
        write_json(
            args.json, {**figures, "adaptive_k": {"teacher": args.teacher, "rows": rows, "vs_fixed": comparison}}
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
