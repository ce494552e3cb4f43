"""The teacher pass: dataset -> teacher actor pool (top-k on device) -> one writer task per shard -> manifest."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.data
import torch

import logitstore
from logitstore import Manifest, ShardData, commit_store, index_dtype_for, plan_shards, write_shard
from logitstore.errors import StoreExistsError
from logitstore.lock import LOCK_NAME, StoreLock
from logitstore.manifest import MANIFEST_NAME, read_manifest
from logitstore.shard import trim_samples
from logitstore.codec import Codec
from logitstore.writer import check_destination, completed_shards, start_or_resume, write_tokenizer
from trainer.augment import derive_seeds, resolve_augment
from trainer.config import CONTENT_FIELDS, DumpConfig
from trainer.data import TextOptions, fingerprint_dataset, is_text_dataset, load_dataset, text_corpus_identity
from trainer.errors import ConfigError, DataError
from trainer.lm.tokenization import resolve_tokenizer, sha256_text
from trainer.losses import draw_teacher_samples
from trainer.models import build_model, model_input, probe_width, weights_sha256
from trainer.ray_env import cluster_cpus, cluster_gpus, ensure_ray
from trainer.specs import worker_runtime_env


def _precision(requested: str, device: torch.device) -> torch.dtype:
    if requested == "fp32" or (requested == "auto" and device.type == "cpu"):
        return torch.float32
    if requested == "fp16" or (requested == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _logsumexp_from_max(z: torch.Tensor, top: torch.Tensor, temperatures: torch.Tensor, *, inplace: bool,
                        scratch: torch.Tensor | None = None) -> torch.Tensor:
    """logsumexp(z / T) for each T, [N, V] -> [N, R], shifted by the row maximum `top` [N] (the
    top-1, already known). One buffer, no [N, R, V] tensor; temperatures are taken from the highest
    down, and where one is half the previous one, exp(x/T) = exp(x/2T)^2 is a multiply, not an
    exp (the default 1,2,4 needs one exp). `inplace` lets it overwrite z; `scratch` (at least z's
    size) is reused instead of a fresh buffer (a fresh one costs its page faults on every batch)."""
    shifted = z.sub_(top.unsqueeze(1)) if inplace else z - top.unsqueeze(1)
    temps = temperatures.tolist()
    out = torch.empty(z.shape[0], len(temps), dtype=z.dtype, device=z.device)
    e = torch.empty_like(shifted) if scratch is None else scratch.view(-1)[: shifted.numel()].view(shifted.shape)
    previous = None
    for r in sorted(range(len(temps)), key=lambda i: -temps[i]):
        t = temps[r]
        if previous is not None and math.isclose(previous / t, 2.0, rel_tol=1e-12):
            e.mul_(e)
        else:
            torch.mul(shifted, 1.0 / t, out=e).exp_()
        out[:, r] = e.sum(dim=-1).log_() + top / t
        previous = t
    return out


class TeacherScorer:
    """One teacher replica (a Ray Data actor). Weights come from the driver, so every replica is identical."""

    def __init__(self, spec: str, state_ref: list, top_k: int, temperatures: list[float], precision: str,
                 index_dtype: str, threads: int, selection: dict, views: dict | None = None):
        # An error raised here would reach the driver as a bare ActorDiedError; keep it and raise it
        # from __call__, where Ray keeps the original exception.
        self.init_error: Exception | None = None
        try:
            self._setup(spec, state_ref, top_k, temperatures, precision, index_dtype, threads, selection, views)
        except Exception as exc:
            self.init_error = exc

    def _setup(self, spec, state_ref, top_k, temperatures, precision, index_dtype, threads, selection, views) -> None:
        torch.set_num_threads(threads)
        self.selection = selection
        self.views = views
        self.augment = resolve_augment(views["augment"]) if views else None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = _precision(precision, self.device)
        model = build_model(spec, "--teacher", pretrained=False)
        model.load_state_dict(ray.get(state_ref[0]))
        self.model = model.to(self.device, self.dtype).eval()
        self.top_k = top_k
        self.temperatures = torch.tensor(temperatures, dtype=torch.float32, device=self.device)
        self.index_dtype = index_dtype
        self._scratch: torch.Tensor | None = None  # reused by the normalisers, batch after batch

    def score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch through the teacher -> the top-k, log-normalisers (and draws) of its positions,
        flat in sample order, with `positions` per sample (1 for a classifier, `length` for text)."""
        sequence = "input_ids" in batch
        x = model_input(batch)
        view_seed = None
        if self.views:
            # V augmented copies of each input, in sample order: position v of a sample is view v.
            count = int(self.views["count"])
            view_seed = derive_seeds(int(self.views["seed"]), np.repeat(batch["id"], count), np.tile(np.arange(count), len(batch["id"])))
            x = self.augment(x.repeat_interleave(count, dim=0), torch.from_numpy(view_seed))
        x = x.to(self.device, non_blocking=True)
        if not sequence:
            x = x.to(self.dtype)
        with torch.inference_mode():
            z = self.model(x).float()  # top-k and normalisers in fp32, on the device
            if sequence:
                # Only the valid positions of each block; padding is never stored. Full blocks
                # (nearly all) need no copy.
                lengths_t = torch.as_tensor(batch["length"], device=self.device)
                valid = torch.arange(z.shape[1], device=self.device) < lengths_t.unsqueeze(1)
                z_valid = z.reshape(-1, z.shape[-1]) if bool(valid.all()) else z[valid]
            else:
                z_valid = z
            values, indices = z_valid.topk(self.top_k, dim=-1, sorted=True)
            draws = self.selection["kind"] != "topk"
            if self._scratch is None or self._scratch.numel() < z_valid.numel() or self._scratch.device != z_valid.device:
                self._scratch = torch.empty(z_valid.numel(), dtype=z_valid.dtype, device=z_valid.device)
            lse = _logsumexp_from_max(z_valid, values[:, 0], self.temperatures, inplace=not draws, scratch=self._scratch)
            # A NaN or +inf logit anywhere makes its row's normaliser non-finite, so checking the
            # results finds every bad row without another pass over the full logits.
            finite = torch.isfinite(lse).all(dim=-1) & torch.isfinite(values).all(dim=-1)
            if not bool(finite.all()):
                if sequence:
                    per_position = torch.zeros(valid.shape, dtype=torch.bool, device=self.device)
                    per_position[valid] = ~finite
                    bad = batch["id"][per_position.any(dim=1).cpu().numpy()]
                else:
                    bad = np.repeat(batch["id"], len(finite) // len(batch["id"]))[(~finite).cpu().numpy()]
                raise DataError(f"the teacher produced NaN or inf logits for sample ids {bad[:5].tolist()}: check the teacher and those inputs")
            if draws:
                lengths = np.asarray(batch["length"]) if sequence else np.ones(len(batch["id"]), dtype=np.int64)
                draw_index, draw_count = self._draw(z_valid, indices, batch["id"], lengths)
        out = {"topk_index": indices.cpu().numpy().astype(self.index_dtype), "topk_logit": values.cpu().numpy(),
               "logsumexp": lse.cpu().numpy()}
        if self.selection["kind"] != "topk":
            out["sample_index"] = draw_index.cpu().numpy().astype(self.index_dtype)
            out["sample_count"] = draw_count.cpu().numpy().astype(np.uint16)
        if view_seed is not None:
            out["view_seed"] = view_seed
        positions = np.asarray(batch["length"], dtype=np.int64) if sequence else np.ones(len(batch["id"]), dtype=np.int64)
        if self.views:
            positions *= int(self.views["count"])
        return {"id": batch["id"], "shard": batch["shard"], "positions": positions, **out}

    def _draw(self, z: torch.Tensor, head: torch.Tensor, ids: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws for every position, seeded per sample id: the store does not depend on batching or workers."""
        hybrid = self.selection["kind"] == "hybrid"
        index, count, start = [], [], 0
        for sample_id, n in zip(ids, lengths):
            rows = slice(start, start + int(n))
            generator = torch.Generator(device=self.device)
            generator.manual_seed((int(self.selection["seed"]) * 1_000_003 + int(sample_id)) % 2**64)
            i, c = draw_teacher_samples(z[rows], self.selection["temperature"], self.selection["draws"],
                                        generator=generator, exclude=head[rows] if hybrid else None)
            index.append(i)
            count.append(c)
            start += int(n)
        return torch.cat(index), torch.cat(count)


class ShardDumper(TeacherScorer):
    """Teacher and writer of whole shards (a Ray Data actor): map_groups hands it every row of one
    shard; it scores them in batches of `batch_size` in id order and writes the shard. So the
    teacher sees the same batches whatever the number of workers or a resume, and each finished
    shard is on disk at once (a crash loses only the shards in flight)."""

    def __init__(self, *, batch_size: int, write: dict, **scorer) -> None:
        super().__init__(**scorer)
        self.batch_size = batch_size
        self.write = write

    def __call__(self, group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.init_error is not None:
            raise self.init_error
        order = np.argsort(group["id"], kind="stable")
        group = {key: value[order] for key, value in group.items()}
        n = len(group["id"])
        parts = [self.score({key: value[s:s + self.batch_size] for key, value in group.items()})
                 for s in range(0, n, self.batch_size)]
        return _write_group({key: np.concatenate([p[key] for p in parts]) for key in parts[0]}, **self.write)


def _write_group(rows: dict[str, np.ndarray], *, root: str, backend: str, top_k: int, num_temperatures: int,
                 index_dtype: str, vocab_size: int, expected_counts: np.ndarray, draws: int, codec, views: int) -> dict[str, np.ndarray]:
    """Write one whole shard (every sample of it, in id order, its positions flat) -> its ShardInfo."""
    shard = int(rows["shard"][0])
    if shard < 0 or len(rows["id"]) != int(expected_counts[shard]):
        raise DataError("the dataset changed while it was being dumped (ids differ from the first pass): make the dataset deterministic")
    sampled = "sample_index" in rows
    if sampled:  # only as wide as the most distinct ids any position of this shard drew
        sample_index, sample_count = trim_samples(rows["sample_index"], rows["sample_count"])
    offsets = np.zeros(len(rows["id"]) + 1, dtype=np.int64)
    np.cumsum(rows["positions"], out=offsets[1:])
    data = ShardData(
        sample_id=rows["id"].astype(np.int64),
        position_offsets=offsets,
        topk_index=rows["topk_index"],
        topk_logit=rows["topk_logit"].astype(np.float32, copy=False),
        logsumexp=rows["logsumexp"].astype(np.float32, copy=False),
        sample_index=sample_index if sampled else None,
        sample_count=sample_count if sampled else None,
        view_seed=rows.get("view_seed"),
    )
    info = write_shard(root, backend, shard, data, top_k=top_k, num_temperatures=num_temperatures,
                       index_dtype=index_dtype, vocab_size=vocab_size, draws=draws, codec=codec, views=views)
    return {key: np.array([value]) for key, value in info.__dict__.items()}


@dataclass(frozen=True)
class DumpSummary:
    manifest: Manifest
    seconds: float
    resumed_shards: int = 0

    def lines(self) -> list[str]:
        m = self.manifest
        entries = m.num_positions * (m.top_k + m.draws)
        sampled = f", {m.selection['kind']} +{m.draws} draws at T={m.selection['temperature']:g}" if m.draws else ""
        return [
            f"store     {m.backend} store, k={m.top_k} of {m.vocab_size} classes{sampled}, T={','.join(f'{t:g}' for t in m.temperatures)}",
            f"samples   {m.num_samples} ({m.num_positions} positions) in {len(m.shards)} shards",
            f"bytes     {m.num_bytes} on disk, {m.num_bytes / entries:.2f} bytes per stored (index, value) entry",
            f"speed     {m.num_samples / self.seconds:.1f} samples/s ({self.seconds:.1f} s)"
            + (f"; resumed: {self.resumed_shards} of {len(m.shards)} shards were already complete" if self.resumed_shards else ""),
        ]


def run_dump(cfg: DumpConfig) -> DumpSummary:
    """Dump under the store's lock; an interrupted dump rerun with the same arguments resumes."""
    out = Path(cfg.out)
    check_destination(out)  # before the lock file is created in someone's directory
    created = not out.exists()
    try:
        with StoreLock(out):
            return _dump(cfg)
    finally:
        # A dump refused before it wrote anything leaves no directory behind.
        if created and out.is_dir() and [p.name for p in out.iterdir()] == [LOCK_NAME]:
            (out / LOCK_NAME).unlink(missing_ok=True)
            out.rmdir()


def _dump(cfg: DumpConfig) -> DumpSummary:
    start = time.perf_counter()
    teacher = build_model(cfg.teacher, "--teacher")
    ensure_ray()
    text = is_text_dataset(cfg.dataset)
    tokenizer = resolve_tokenizer(cfg.tokenizer) if text else None
    ds = load_dataset(cfg.dataset, "--dataset", TextOptions(tokenizer.to_json() if tokenizer else None, cfg.seq_len))
    fingerprint = fingerprint_dataset(ds, cfg.dataset)  # also refuses empty data and duplicate ids
    vocab = probe_width(teacher, ds.take_batch(2, batch_format="numpy"), "--teacher", cfg.teacher)
    if fingerprint.max_token >= vocab:
        raise DataError(f"--dataset {cfg.dataset} holds token id {fingerprint.max_token} but the teacher's vocabulary has {vocab} entries: tokenise the data with the teacher's tokenizer")
    if cfg.top_k > vocab:
        raise ConfigError([f"--top-k {cfg.top_k} exceeds the teacher's {vocab} classes: use --top-k {vocab} or less"])
    plan = plan_shards(fingerprint.ids, cfg.shard_size)
    gpus = cluster_gpus()
    dtype = str(_precision(cfg.precision, torch.device("cuda" if gpus >= 1 else "cpu"))).replace("torch.", "")
    index_dtype = index_dtype_for(vocab)
    selection = {"kind": cfg.selection}
    if cfg.selection != "topk":
        selection.update(draws=cfg.draws, temperature=float(cfg.sample_temperature), seed=cfg.seed)
    teacher_info = {"spec": cfg.teacher, "weights_sha256": weights_sha256(teacher),
                    "num_parameters": sum(p.numel() for p in teacher.parameters()), "dtype": dtype}
    codec = Codec.make(cfg.index_codec, cfg.value_codec, cfg.value_bits, cfg.temperatures)
    views = {"count": cfg.views, "augment": cfg.augment, "seed": cfg.seed} if cfg.views else None
    if views and text:
        raise ConfigError([f"--views applies to datasets of one input per sample; {cfg.dataset} is text: dump it without --views"])
    identity = {
        "format_version": Manifest.version_for(selection, codec.to_json(), views), "config": {k: getattr(cfg, k) for k in CONTENT_FIELDS},
        "teacher": teacher_info, "dataset": fingerprint.to_manifest(), "vocab_size": vocab,
        "tokenizer_sha256": sha256_text(tokenizer.to_json()) if tokenizer and tokenizer.to_json() else None,
    }
    root = Path(cfg.out)
    content_sha256 = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    if (root / MANIFEST_NAME).exists() and not cfg.overwrite:
        existing = read_manifest(root)
        if existing.content_sha256 != content_sha256:
            raise StoreExistsError(f"a complete store made from other teacher weights, data or arguments already exists at {root}: pass --overwrite to replace it, or choose another --out")
        print(f"{root} already holds this exact dump (same arguments, teacher weights and data): nothing to do", file=sys.stderr)
        return DumpSummary(manifest=existing, seconds=time.perf_counter() - start, resumed_shards=len(existing.shards))
    resumed = start_or_resume(root, identity, overwrite=cfg.overwrite)
    tokenizer_entry = None
    if tokenizer is not None:
        tokenizer_entry = {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size}
        if tokenizer.to_json() is not None:
            tokenizer_entry.update(write_tokenizer(root, tokenizer.to_json()))
    layout = dict(top_k=cfg.top_k, num_temperatures=len(cfg.temperatures), index_dtype=index_dtype, vocab_size=vocab,
                  draws=selection.get("draws", 0), codec=codec, views=cfg.views)
    done = completed_shards(root, cfg.format, plan, **layout) if resumed else {}
    if resumed:
        print(f"resuming the unfinished dump in {root}: {len(done)} of {plan.num_shards} shards are complete", file=sys.stderr)
    todo = np.array([j not in done for j in range(plan.num_shards)])
    written = _score_and_write(cfg, teacher, ds, plan, todo, selection, layout, gpus) if todo.any() else []
    infos = sorted([*done.values(), *written], key=lambda i: i.index)
    if [i.index for i in infos] != list(range(plan.num_shards)):
        raise DataError(f"the dump wrote shards {[i.index for i in infos]} of {plan.num_shards} planned: run it again")

    manifest = Manifest(
        backend=cfg.format,
        top_k=cfg.top_k,
        vocab_size=vocab,
        index_dtype=index_dtype,
        value_dtype="float32",
        temperatures=[float(t) for t in cfg.temperatures],
        num_samples=fingerprint.num_samples,
        num_positions=sum(i.num_positions for i in infos),
        shard_size=cfg.shard_size,
        teacher=teacher_info,
        dataset={**fingerprint.to_manifest(), **({"corpus": text_corpus_identity(cfg.dataset)} if text else {})},
        shards=infos,
        config=cfg.to_dict(),
        created_by=f"logitstore {logitstore.__version__}",
        selection=selection,
        tokenizer=tokenizer_entry,
        content_sha256=content_sha256,
        codec=codec.to_json(),
        views=views,
        format_version=Manifest.version_for(selection, codec.to_json(), views),
    )
    commit_store(root, manifest)
    return DumpSummary(manifest=manifest, seconds=time.perf_counter() - start, resumed_shards=len(done))


def _shard_rows(batch: dict[str, np.ndarray], first_ids: np.ndarray, last_ids: np.ndarray, todo: np.ndarray) -> dict[str, np.ndarray]:
    """Each row with its shard, keeping only shards still to write (a resume never re-runs the teacher on the rest)."""
    shard = logitstore.ShardPlan(first_ids, last_ids, np.zeros_like(first_ids)).shard_of(batch["id"])
    if np.any(shard < 0):
        raise DataError("the dataset changed while it was being dumped (ids differ from the first pass): make the dataset deterministic")
    keep = todo[shard]
    return {**{key: value[keep] for key, value in batch.items()}, "shard": shard[keep]}


def _score_and_write(cfg: DumpConfig, teacher: torch.nn.Module, ds: ray.data.Dataset, plan, todo: np.ndarray,
                     selection: dict, layout: dict, gpus: float) -> list[logitstore.ShardInfo]:
    keyed = ds.map_batches(_shard_rows, batch_format="numpy",
                           fn_kwargs={"first_ids": plan.first_ids, "last_ids": plan.last_ids, "todo": todo})
    threads = cfg.threads_per_worker or max(1, int(cluster_cpus() // cfg.workers))
    # Leave one whole CPU free for the read and sort tasks, or the pipeline stalls "backpressured".
    per_actor = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": max(0.25, min(1.0, (cluster_cpus() - 1.0) / cfg.workers))}
    state_ref = [ray.put({k: v.detach().cpu() for k, v in teacher.state_dict().items()})]
    # Group the inputs (small) by shard, not the outputs (k values per position): then one actor
    # scores and writes each shard.
    written = keyed.groupby("shard").map_groups(
        ShardDumper,
        compute=ray.data.ActorPoolStrategy(size=cfg.workers),
        batch_format="numpy",
        fn_constructor_kwargs=dict(
            spec=cfg.teacher, state_ref=state_ref, top_k=cfg.top_k, temperatures=list(cfg.temperatures),
            precision=cfg.precision, index_dtype=layout["index_dtype"], threads=threads, selection=selection,
            views={"count": cfg.views, "augment": cfg.augment, "seed": cfg.seed} if cfg.views else None,
            batch_size=cfg.batch_size,
            write=dict(root=str(cfg.out), backend=cfg.format, expected_counts=plan.counts, **layout)),
        runtime_env=worker_runtime_env(),  # user modules from the working directory, even in a long-lived session
        **per_actor,
    )
    rows = written.take_all()
    return [logitstore.ShardInfo(**{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}) for r in rows]


def main_body(cfg: DumpConfig) -> None:
    summary = run_dump(cfg)
    print(f"dump complete: {cfg.out}", file=sys.stderr)
    for line in summary.lines():
        print(line)
