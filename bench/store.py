"""Store codecs on real LM teacher outputs: bytes per entry, KL distortion, write and read speed.

    python -m bench.store [--quick] [--k 64] [--json PATH]

Each BPE teacher of the LM example (stdlib-gpt-bpe8192, stdlib-gpt-bpe32k; trained once and
cached) runs once over stdlib-small-eval; its top-k per token and logsumexp at T=1,2,4 are written
as one store per backend x codec, with the store's own writer, and read back with its reader.
For each store:
  bytes/entry     bytes on disk / (positions x k), everything included (ids, offsets, normalisers)
  KL distortion   mean per position of KL(exact k+1 buckets || the buckets the trainer's loss builds
                  from what was read back), the exact ones in float64 from the teacher's fp32
                  logits; the worst of T=1,2,4
  write MB/s      exact payload (fp32 logits, uint16/32 ids, fp32 normalisers) / write time
  read / zstd     entries/s of reading the store into torch batches (checksum, decode, torch
                  tensors) / entries/s of plain zstd decompressing the same encoded arrays (pyarrow's
                  zstd, the store's level), measured side by side in this run
--quick (CI): the byte-level teacher (V=256) trained for a few steps, a quarter of the text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from bench.common import markdown_table, write_json
from logitstore import ShardData, StoreLayout, StoreReader, StoreWriter, index_dtype_for, plan_shards
from logitstore.backends import ZSTD_LEVEL
from logitstore.codec import Codec
from logitstore.layout import Selection
from trainer.builtin.stdlib import example
from trainer.inputs.datasets import TEXT_PARTS, TextOptions, text_part
from trainer.inputs.tokenizers import resolve_tokenizer
from trainer.student.losses import teacher_buckets

TEMPERATURES = (1.0, 2.0, 4.0)
SHARD_SIZE = 128  # blocks of 128 tokens: 16k positions per shard
CODECS = {  # name -> (index codec, value codec, bits)
    "plain/float32": ("plain", "float32", 0),
    "delta/float32": ("delta", "float32", 0),
    "delta/logq8": ("delta", "logq", 8),
    "delta/logq10": ("delta", "logq", 10),
}
HEADLINE = "delta/logq8"  # the codec the goals are measured on


def eval_logits(name: str, parts: int, quick: bool, batch: int = 32) -> tuple[np.ndarray, Iterator[torch.Tensor]]:
    """The built-in teacher `name` over the first `parts` parts of stdlib-small-eval -> (lengths [S],
    its fp32 logits [N, V] at the valid positions of each batch of `batch` blocks, in order)."""
    spec = example.TEACHERS[name]
    model = example.train_teacher(30, name=name) if quick else example.load_teacher(name)
    options = TextOptions(tokenizer_json=resolve_tokenizer(spec.tokenizer).to_json())
    blocks = [text_part("stdlib-small-eval", p, options) for p in range(parts)]
    ids = np.concatenate([b["input_ids"] for b in blocks])
    lengths = np.concatenate([b["length"] for b in blocks])

    def logits() -> Iterator[torch.Tensor]:
        with torch.inference_mode():
            for start in range(0, len(ids), batch):
                z = model(torch.from_numpy(ids[start : start + batch]))
                valid = torch.arange(z.shape[1]) < torch.from_numpy(lengths[start : start + batch]).unsqueeze(1)
                yield z[valid].float()

    return lengths, logits()


def teacher_outputs(name: str, k: int, parts: int, quick: bool) -> dict[str, np.ndarray]:
    """The teacher over stdlib-small-eval -> lengths [S], top-k logits [P, k] (fp32, descending),
    their ids, logsumexp [P, R] (float64)."""
    spec = example.TEACHERS[name]
    lengths, batches = eval_logits(name, parts, quick)
    values, index, lse = [], [], []
    with torch.inference_mode():
        for z in batches:
            v, i = z.topk(k, dim=-1)
            values.append(v.numpy())
            index.append(i.numpy())
            lse.append(torch.stack([torch.logsumexp(z.double() / t, dim=-1) for t in TEMPERATURES], dim=1).numpy())
    vocab = spec.teacher.vocab_size
    return {
        "lengths": lengths,
        "values": np.concatenate(values),
        "vocab": vocab,
        "index": np.concatenate(index).astype(index_dtype_for(vocab)),
        "lse": np.concatenate(lse),
    }


def shards_of(out: dict) -> list[ShardData]:
    lengths = out["lengths"]
    ids = np.arange(len(lengths), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    plan = plan_shards(ids, SHARD_SIZE)
    shards, row = [], 0
    lse32 = out["lse"].astype(np.float32)
    for j in range(plan.num_shards):
        n = int(plan.counts[j])
        a, b = int(offsets[row]), int(offsets[row + n])
        shards.append(
            ShardData(
                ids[row : row + n], offsets[row : row + n + 1] - a, out["index"][a:b], out["values"][a:b], lse32[a:b]
            )
        )
        row += n
    return shards


def write_store(
    root: Path, backend: str, codec: Codec, shards: list[ShardData], vocab: int, selection: Selection | None = None
) -> float:
    """Write the shards through the StoreWriter (timed: encode and write) and commit."""
    ids = np.concatenate([d.sample_id for d in shards])
    layout = StoreLayout(
        backend=backend,
        top_k=shards[0].top_k,
        vocab_size=vocab,
        temperatures=TEMPERATURES,
        shard_size=SHARD_SIZE,
        codec=codec,
        selection=selection or Selection(),
    )
    with StoreWriter(root) as writer:
        writer.start(layout, plan_shards(ids, SHARD_SIZE), {"bench": "store"}, overwrite=True)
        start = time.perf_counter()
        infos = [writer.shard_writer().write(j, d) for j, d in enumerate(shards)]
        seconds = time.perf_counter() - start
        digest = hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()
        writer.commit(
            infos,
            teacher={"spec": "bench.store teacher", "weights_sha256": digest},
            dataset={
                "spec": "stdlib-small-eval",
                "num_samples": len(ids),
                "ids_sha256": digest,
                "inputs_sha256": digest,
            },
            config={},
        )
    return seconds


def to_torch(data: ShardData) -> dict[str, torch.Tensor]:
    """What a training batch needs from a shard, as torch tensors (zero-copy where the arrays allow;
    Arrow's read-only buffers are only read)."""
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    out = {
        "topk_index": torch.from_numpy(data.topk_index.astype(np.int64)),
        "topk_logit": torch.from_numpy(data.topk_logit),
        "logsumexp": torch.from_numpy(data.logsumexp),
    }
    if "rest_mass" in data.extras:
        out["rest_mass"] = torch.from_numpy(data.extras["rest_mass"])
    return out


def read_store(root: Path) -> tuple[float, list[dict[str, torch.Tensor]]]:
    reader = StoreReader(root, cache_shards=1)
    start = time.perf_counter()
    batches = [to_torch(data) for _, data in reader.iter_shards()]
    return time.perf_counter() - start, batches


def plain_zstd_seconds(codec: Codec, shards: list[ShardData], repeats: int = 3) -> float:
    """Decompressing the same encoded arrays with plain zstd (level 3, as the stores), best of `repeats`."""
    zstd = pa.Codec("zstd", compression_level=ZSTD_LEVEL)
    blobs = [
        (zstd.compress(np.ascontiguousarray(a).tobytes(), asbytes=True), a.nbytes)
        for d in shards
        for a in codec.encode(d).values()
    ]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for blob, n in blobs:
            np.frombuffer(zstd.decompress(blob, decompressed_size=n, asbytes=True), dtype=np.uint8)
        best = min(best, time.perf_counter() - start)
    return best


def bucket_kl(out: dict, batches: list[dict[str, torch.Tensor]], r: int, t: float) -> float:
    """Mean KL(exact k+1 buckets || the loss's buckets from the stored arrays), float64."""
    z = torch.from_numpy(out["values"]).double()
    p_head = torch.exp(z / t - torch.from_numpy(out["lse"][:, r]).double().unsqueeze(1))
    p_rest = (1 - p_head.sum(1)).clamp(min=0)
    # The loss's buckets, with entries matched by class id (codecs may reorder them).
    index = torch.cat([b["topk_index"] for b in batches])
    logit = torch.cat([b["topk_logit"] for b in batches]).double()
    lse = torch.cat([b["logsumexp"][:, r] for b in batches]).double()
    rest = torch.cat([b["rest_mass"][:, r] for b in batches]).double() if "rest_mass" in batches[0] else None
    _, q_head, q_rest = teacher_buckets(logit, lse, t, None, rest)
    q_head = q_head.gather(1, index.argsort(dim=1))  # by class id
    exact_index = torch.from_numpy(out["index"].astype(np.int64))
    p_head = p_head.gather(1, exact_index.argsort(dim=1))
    kl = (p_head * (p_head.clamp(min=1e-300).log() - q_head.clamp(min=1e-300).log())).sum(1)
    kl += torch.where(p_rest > 0, p_rest * (p_rest.clamp(min=1e-300).log() - q_rest.clamp(min=1e-300).log()), 0.0)
    return float(kl.mean())


def bench_teacher(name: str, k: int, parts: int, quick: bool, work: Path) -> list[dict]:
    out = teacher_outputs(name, k, parts, quick)
    shards = shards_of(out)
    entries = out["values"].size
    payload = out["values"].nbytes + out["index"].nbytes + out["lse"].size * 4
    print(f"{name}: {out['values'].shape[0]} positions over stdlib-small-eval, k={k} of {out['vocab']}", flush=True)
    rows = []
    for backend in ("zarr", "arrow"):
        for codec_name, (index_codec, value_codec, bits) in CODECS.items():
            codec = Codec.make(index_codec, value_codec, bits, TEMPERATURES)
            root = work / f"{name}-{backend}-{codec_name.replace('/', '-')}"
            write_s = write_store(root, backend, codec, shards, out["vocab"])
            read_s, batches = min((read_store(root) for _ in range(2)), key=lambda x: x[0])
            zstd_s = plain_zstd_seconds(codec, shards)
            rows.append(
                {
                    "teacher": name,
                    "vocab": out["vocab"],
                    "backend": backend,
                    "codec": codec_name,
                    "bytes_per_entry": StoreReader(root).manifest.num_bytes / entries,
                    "kl_distortion": max(bucket_kl(out, batches, r, t) for r, t in enumerate(TEMPERATURES)),
                    "write_mb_s": payload / write_s / 1e6,
                    "read_mentries_s": entries / read_s / 1e6,
                    "read_vs_zstd": zstd_s / read_s,
                }
            )
            print(rows[-1], flush=True)
            shutil.rmtree(root, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument(
        "--quick", action="store_true", help="CI: a briefly trained byte-level teacher, a quarter of the text"
    )
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    teachers = ["stdlib-gpt"] if args.quick else ["stdlib-gpt-bpe8192", "stdlib-gpt-bpe32k"]
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        rows = [
            r
            for name in teachers
            for r in bench_teacher(name, args.k, TEXT_PARTS // 4 if args.quick else TEXT_PARTS, args.quick, work)
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nStore codecs, k={args.k}, T={','.join(f'{t:g}' for t in TEMPERATURES)} (DistillKit: 2.3-2.6 "
        "B/entry; raw fp16 + uint16: 4 B/entry)\n"
    )
    print(
        markdown_table(
            rows,
            [
                ("teacher", "{}"),
                ("backend", "{}"),
                ("codec", "{}"),
                ("bytes_per_entry", "{:.3f}"),
                ("kl_distortion", "{:.2e}"),
                ("write_mb_s", "{:.1f}"),
                ("read_mentries_s", "{:.1f}"),
                ("read_vs_zstd", "{:.2f}"),
            ],
        )
    )
    head = [r for r in rows if r["codec"] == HEADLINE]
    figures = {
        "bytes_per_entry": {f"vocab_{r['vocab']}": r["bytes_per_entry"] for r in head if r["backend"] == "zarr"},
        "kl_distortion": max(r["kl_distortion"] for r in head),
        "read_vs_zstd": min(r["read_vs_zstd"] for r in head),
    }
    print(f"\nheadline ({HEADLINE}): {json.dumps(figures)}")
    if args.json:
        write_json(
            args.json,
            {**figures, "store": {"headline_codec": HEADLINE, "k": args.k, "quick": args.quick, "rows": rows}},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
