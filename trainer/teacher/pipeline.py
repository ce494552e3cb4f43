"""The teacher pass: dataset -> fingerprint -> plan -> teacher actor pool (one actor scores and writes
each whole shard) -> manifest, under the store's lock or lease (logitstore.open_writer: a local
store or one on object storage)."""

from __future__ import annotations

import importlib.util
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import ray
import ray.data
from ray.data.block import BlockAccessor

from logitstore import (
    Features,
    Inputs,
    Selection,
    ShardData,
    ShardInfo,
    ShardPlan,
    ShardWriter,
    StoreLayout,
    StoreWriter,
    TokenizerRef,
    Views,
    open_writer,
    plan_shards,
)
from logitstore.features import projection_sha256, projections
from logitstore.shard import EXTRAS, TokenInputs, trim_samples
from logitstore.storage import is_object_uri
from trainer.errors import ConfigError, DataError
from trainer.inputs import registry
from trainer.inputs.chat import files_sha256
from trainer.inputs.datasets import (
    DatasetFingerprint,
    TextOptions,
    fingerprint_dataset,
    fingerprint_rows,
    load_dataset,
    read_here,
)
from trainer.inputs.sources import source_sha256
from trainer.inputs.specs import worker_runtime_env
from trainer.inputs.tokenizers import Tokenizer, resolve_tokenizer
from trainer.options import parse_resources
from trainer.progress import Progress
from trainer.ray_env import cluster_cpus, cluster_gpus, ensure_ray, placement_problem
from trainer.teacher.batching import in_id_order, length_batches, trimmed
from trainer.teacher.config import DumpConfig
from trainer.teacher.rerun import (
    DumpResult,
    answer_without_ray,
    builtin_tokenizer_sha256,
    print_nothing_to_do,
    teacher_record,
)
from trainer.teacher.scorer import TeacherScorer
from trainer.teacher.source import TeacherSource, resolve_teacher
from trainer.teacher.vllm_scorer import VLLMScorer


@dataclass(frozen=True)
class DumpInputs:
    """What the teacher pass reads, resolved and fingerprinted once: a small dataset's rows read in
    the driver (`rows`), or a Ray Dataset that reads the rest where it runs."""

    dataset: ray.data.Dataset | None
    rows: dict[str, np.ndarray] | None
    fingerprint: DatasetFingerprint
    tokenizer: Tokenizer | None  # for built-in text: what the dump tokenises with
    vocab_size: int  # the teacher's output width
    hf_tokenizer: HFTokenizerFiles | None = None  # for text files: the tokenizer the store keeps

    def tokenizer_sha256(self) -> str | None:
        """What identifies the tokenizer the token ids come from (part of the dump's identity)."""
        if self.hf_tokenizer is not None:
            return files_sha256(self.hf_tokenizer.files)
        return builtin_tokenizer_sha256(self.tokenizer)


@dataclass(frozen=True)
class HFTokenizerFiles:
    files: dict[str, bytes]
    vocab_size: int
    chat_template_sha256: str | None

    @staticmethod
    def load(spec: str) -> HFTokenizerFiles:
        from trainer.inputs.chat import chat_template_sha256, load_tokenizer, tokenizer_files

        tok = load_tokenizer(spec)
        return HFTokenizerFiles(tokenizer_files(spec), len(tok), chat_template_sha256(tok))


def run_dump(cfg: DumpConfig, *, rerun_checked: bool = False) -> DumpResult:
    """Dump under the store's lock or lease; an interrupted dump rerun with the same arguments resumes."""
    start = time.perf_counter()
    answer = None if rerun_checked else answer_without_ray(cfg)  # the CLI asks before importing Ray
    if answer is not None:
        return answer
    with open_writer(cfg.out) as writer:
        teacher, read = _start(cfg)
        inputs = _resolve_inputs(cfg, teacher, read)
        shard_size = _shard_size(cfg, inputs.fingerprint.num_samples, writer.recorded())
        layout = _layout(
            cfg,
            inputs.vocab_size,
            shard_size,
            sequence=inputs.fingerprint.max_length > 0,
            features=_features(cfg, teacher),
        )
        plan = plan_shards(inputs.fingerprint.ids, shard_size)
        records = {
            "teacher": teacher_record(cfg, teacher.record(), _on_gpu()),
            "dataset": _dataset_record(cfg, inputs.fingerprint),
        }
        identity = {"config": cfg.content(), **records, "tokenizer_sha256": inputs.tokenizer_sha256()}
        writer.start(layout, plan, identity, overwrite=cfg.overwrite)
        if writer.finished is not None:
            print_nothing_to_do(cfg)
            return DumpResult(writer.finished, time.perf_counter() - start, len(writer.finished.shards))
        if writer.resumed:
            print(
                f"resuming the unfinished dump in {cfg.out}: {len(writer.resumed)} of {plan.num_shards} "
                "shards are complete",
                file=sys.stderr,
            )
        tokenizer = _save_tokenizer(writer, inputs)
        projection = _save_projection(writer, layout)
        todo = np.array([j not in writer.resumed for j in range(plan.num_shards)])
        scoring = time.perf_counter()
        written = (
            _score_and_write(cfg, teacher, inputs, plan, todo, writer.shard_writer(), projection) if todo.any() else []
        )
        scoring = time.perf_counter() - scoring
        manifest = writer.commit(
            [*writer.resumed.values(), *written], **records, config=cfg.to_dict(), tokenizer=tokenizer,
            features_sha256=projection_sha256(projection) if projection else "",
        )  # fmt: skip
    seconds = time.perf_counter() - start
    return DumpResult(manifest, seconds, len(writer.resumed), inputs.fingerprint.num_tokens, scoring)


@dataclass(frozen=True)
class _Read:
    """What the driver reads before the teacher pass: the tokenizers, and a small dataset's rows."""

    tokenizer: Tokenizer | None
    hf_tokenizer: HFTokenizerFiles | None
    text: TextOptions
    rows: dict[str, np.ndarray] | None


def _start(cfg: DumpConfig) -> tuple[TeacherSource, _Read]:
    """Ray started, the teacher resolved and the data read, at once: reading the teacher (importing
    transformers, hashing its files: a 7B teacher's 15 GB take tens of seconds) and the tokenizers and
    a small dataset (read_here) overlap Ray's start, which runs here (ray.init wants the main thread);
    then the checks that need the cluster. One thread does both, one after the other: transformers'
    lazy attributes are not safe to resolve from two threads at once (an ImportError of AutoTokenizer)."""
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(lambda: (resolve_teacher(cfg.teacher), _read(cfg)))
        ensure_ray()
        teacher, read = starting.result()
    _check_gpus(cfg)
    _warn_local_out_on_a_cluster(cfg)
    return teacher, read


def _read(cfg: DumpConfig) -> _Read:
    tokenizer, hf_tokenizer = _tokenizers(cfg)
    text = TextOptions(
        tokenizer.to_json() if tokenizer else None,
        cfg.seq_len,
        hf_tokenizer=cfg.hf_tokenizer() if cfg.text_files else None,
        train_on="" if cfg.train_on == "auto" else cfg.train_on,
    )
    return _Read(tokenizer, hf_tokenizer, text, read_here(cfg.dataset, "--dataset", text))


def _save_tokenizer(writer: StoreWriter, inputs: DumpInputs) -> TokenizerRef | None:
    """The manifest's record of the tokenizer; a tokenizer that is a file (or files) is saved in the store."""
    if inputs.hf_tokenizer is not None:
        hf = inputs.hf_tokenizer
        return writer.save_tokenizer_files(hf.files, hf.vocab_size, hf.chat_template_sha256)
    if inputs.tokenizer is None:
        return None
    kind, vocab, text = inputs.tokenizer.kind, inputs.tokenizer.vocab_size, inputs.tokenizer.to_json()
    return writer.save_tokenizer(text, kind, vocab) if text else TokenizerRef(kind, vocab)


def _features(cfg: DumpConfig, teacher: TeacherSource) -> Features | None:
    """--hidden-layers: the teacher's layers, their widths and the projection's size and seed."""
    layers = cfg.feature_layers
    if not layers:
        return None
    widths = teacher.feature_widths(layers)
    narrow = [(layer, width) for layer, width in zip(layers, widths) if width < cfg.hidden_dim]
    if narrow:
        layer, width = narrow[0]
        raise ConfigError(
            [f"--hidden-dim {cfg.hidden_dim} exceeds layer {layer}'s width {width}: use --hidden-dim {width} or less"]
        )
    return Features(layers=layers, widths=widths, dim=cfg.hidden_dim, seed=cfg.seed)


def _save_projection(writer: StoreWriter, layout: StoreLayout) -> list[np.ndarray] | None:
    """The features' projection, saved in the store before any shard is written with it; a resumed
    dump keeps the one its finished shards were written with."""
    if layout.features is None:
        return None
    saved = writer.saved_projection(layout.features) if writer.resumed else None
    if saved is not None:
        return saved
    matrices = projections(layout.features)
    writer.save_projection(matrices)
    return matrices


def _tokenizers(cfg: DumpConfig) -> tuple[Tokenizer | None, HFTokenizerFiles | None]:
    """What the dump tokenises with: built-in text's tokenizer, or the Hugging Face one of text files."""
    tokenizer = resolve_tokenizer(cfg.tokenizer or "bytes") if registry.is_text(cfg.dataset) else None
    return tokenizer, HFTokenizerFiles.load(cfg.hf_tokenizer()) if cfg.text_files else None


def _resolve_inputs(cfg: DumpConfig, teacher: TeacherSource, read: _Read) -> DumpInputs:
    """Dataset, fingerprint (refuses empty data and duplicate ids), the teacher's width."""
    rows = read.rows
    if rows is None:
        ds = load_dataset(cfg.dataset, "--dataset", read.text)
        fingerprint = fingerprint_dataset(ds, cfg.dataset)
        probe = lambda: ds.take_batch(2, batch_format="numpy")  # noqa: E731
    else:
        ds, fingerprint = None, fingerprint_rows(rows, cfg.dataset)
        probe = lambda: {key: value[:2] for key, value in rows.items()}  # noqa: E731
    if fingerprint.cut_rows:
        print(
            f"{fingerprint.cut_rows} rows longer than --seq-len {cfg.seq_len} keep their first {cfg.seq_len} "
            f"tokens ({fingerprint.cut_tokens} tokens cut): raise --seq-len to keep them",
            file=sys.stderr,
        )
    vocab = teacher.width(probe, tokens=fingerprint.max_token >= 0)
    teacher.check_length(fingerprint.max_length, cfg.dataset)
    if fingerprint.max_token >= vocab:
        raise DataError(
            f"--dataset {cfg.dataset} holds token id {fingerprint.max_token} but the teacher's vocabulary has "
            f"{vocab} entries: tokenise the data with the teacher's tokenizer"
        )
    if cfg.stored_k > vocab:
        flag = "--max-k" if cfg.stored_k != cfg.top_k else "--top-k"
        raise ConfigError([f"{flag} {cfg.stored_k} exceeds the teacher's {vocab} classes: use {flag} {vocab} or less"])
    return DumpInputs(ds, rows, fingerprint, read.tokenizer, vocab, read.hf_tokenizer)


def _shard_size(cfg: DumpConfig, num_samples: int, recorded: tuple[dict, dict] | None) -> int:
    """--shard-size, or less for a small dataset: at least --workers shards, so no actor idles. The
    plan is the layout's shard_size: a rerun with other --workers keeps the one its store records."""
    if recorded is not None and not cfg.overwrite and not cfg.content_differences(recorded[0]):
        size = recorded[1].get("shard_size")
        if isinstance(size, int) and 1 <= size <= cfg.shard_size:
            return size
    return max(1, min(cfg.shard_size, -(-num_samples // cfg.workers)))


def _layout(
    cfg: DumpConfig, vocab_size: int, shard_size: int, sequence: bool, features: Features | None = None
) -> StoreLayout:
    """The store's layout; a store of token data carries its tokens and loss masks (format version 5)."""
    selection = (
        Selection()
        if cfg.selection == "topk"
        else Selection(cfg.selection, cfg.draws, float(cfg.sample_temperature), cfg.seed)
    )
    if cfg.adaptive:
        selection = Selection(top_p=float(cfg.top_p), min_k=cfg.min_k)
    views = Views(cfg.views, cfg.augment, cfg.seed) if cfg.views else None
    return StoreLayout.make(
        backend=cfg.format,
        top_k=cfg.stored_k,
        vocab_size=vocab_size,
        temperatures=cfg.temperatures,
        shard_size=shard_size,
        selection=selection,
        index_codec=cfg.index_codec,
        value_codec=cfg.value_codec,
        value_bits=cfg.value_bits,
        views=views,
        inputs=Inputs("tokens", cfg.seq_len) if sequence else None,
        features=features,
    )


def _actor_gpus(cfg: DumpConfig) -> int:
    """GPUs of one teacher actor on a GPU cluster: vLLM's tensor x pipeline parallel size, else --gpus-per-worker."""
    if cfg.engine == "vllm":
        return cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    return cfg.gpus_per_worker


def _check_gpus(cfg: DumpConfig) -> None:
    """An actor of N > 1 GPUs: the cluster must have N GPUs, and accelerate must be there for --engine hf."""
    if _actor_gpus(cfg) <= 1:
        return
    if cfg.engine == "vllm":
        gpus = cluster_gpus()
        if gpus < _actor_gpus(cfg):
            raise ConfigError(
                [
                    f"--tensor-parallel-size {cfg.tensor_parallel_size} x --pipeline-parallel-size "
                    f"{cfg.pipeline_parallel_size} needs {_actor_gpus(cfg)} GPUs for one teacher but the Ray cluster "
                    f"has {gpus:g}: run on a GPU cluster, or drop the flags"
                ]
            )
        return
    gpus = cluster_gpus()
    if gpus < cfg.gpus_per_worker:
        raise ConfigError(
            [
                f"--gpus-per-worker {cfg.gpus_per_worker} needs {cfg.gpus_per_worker} GPUs for one teacher actor but "
                f"the Ray cluster has {gpus:g}: run on a GPU cluster, or drop the flag to run the teacher on CPU"
            ]
        )
    if importlib.util.find_spec("accelerate") is None:
        raise ConfigError(
            [f"--gpus-per-worker {cfg.gpus_per_worker} places the teacher with accelerate: pip install accelerate"]
        )


def _on_gpu() -> bool:
    return cluster_gpus() >= 1


def _dataset_record(cfg: DumpConfig, fingerprint: DatasetFingerprint) -> dict:
    corpus = {"corpus": registry.text_identity(cfg.dataset)} if registry.is_text(cfg.dataset) else {}
    source = source_sha256(cfg.dataset)
    return {**fingerprint.to_manifest(), **corpus, **({"source_sha256": source} if source else {})}


def _shard_rows(batch: dict[str, np.ndarray], plan: ShardPlan, todo: np.ndarray) -> dict[str, np.ndarray]:
    """Each row with its shard, keeping only shards still to write (a resume never re-runs the teacher on the rest)."""
    shard = plan.shard_of(batch["id"])
    if np.any(shard < 0):
        raise DataError(
            "the dataset changed while it was being dumped (ids differ from the first pass): make the "
            "dataset deterministic"
        )
    keep = todo[shard]
    return {**{key: value[keep] for key, value in batch.items()}, "shard": shard[keep]}


def _shard_blocks(rows: dict[str, np.ndarray], plan: ShardPlan, todo: np.ndarray) -> ray.data.Dataset:
    """Rows in memory as a dataset of one block per shard still to write (map_batches with
    batch_size=None hands each block whole to one call, as map_groups hands a group)."""
    keyed = _shard_rows(rows, plan, todo)
    order = np.argsort(keyed["shard"], kind="stable")
    keyed = {key: value[order] for key, value in keyed.items()}
    cuts = np.flatnonzero(np.diff(keyed["shard"])) + 1  # where one shard's rows end and the next's begin
    parts = [{key: value[a:b] for key, value in keyed.items()} for a, b in zip([0, *cuts], [*cuts, len(order)])]
    return ray.data.from_blocks([BlockAccessor.batch_to_block(part) for part in parts if len(part["id"])])


def _warn_local_out_on_a_cluster(cfg: DumpConfig) -> None:
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1 and not is_object_uri(cfg.out):
        print(
            f"warning: --out {cfg.out} is a local path on a cluster of {nodes} nodes: each teacher actor writes its "
            "shards to the disk of the node it runs on, so this works only on storage every node shares; use an "
            "s3://, gs:// or az:// URI otherwise",
            file=sys.stderr,
        )


def _score_and_write(
    cfg: DumpConfig,
    teacher: TeacherSource,
    inputs: DumpInputs,
    plan: ShardPlan,
    todo: np.ndarray,
    shards: ShardWriter,
    projection: list[np.ndarray] | None = None,
) -> list[ShardInfo]:
    # Leave one whole CPU free for the read and sort tasks, or the pipeline stalls "backpressured".
    per_actor = (
        {"num_gpus": _actor_gpus(cfg)}
        if _on_gpu()
        else {"num_cpus": max(0.25, min(1.0, (cluster_cpus() - 1.0) / cfg.workers))}
    )
    resources = parse_resources(cfg.actor_resources, "--actor-resources")[0]
    problem = placement_problem(resources, per_actor.get("num_cpus", 0.0), "--actor-resources", "teacher actor")
    if problem:
        raise ConfigError(problem)
    # A teacher built here travels as its weights; an hf: one is loaded by each replica from its files.
    state_ref = None if teacher.from_files else [ray.put(teacher.state_dict())]
    pool = dict(
        compute=ray.data.ActorPoolStrategy(size=cfg.workers),
        batch_format="numpy",
        fn_constructor_kwargs=dict(
            spec=cfg.teacher,
            state_ref=state_ref,
            layout=shards.layout,
            precision=cfg.precision,
            threads=cfg.threads_per_worker,
            gpus=cfg.gpus_per_worker if _on_gpu() else 1,
            batch_size=cfg.batch_size,
            shards=shards,
            expected_counts=plan.counts,
            **_engine_kwargs(cfg),
            # the features' projection, the same object for every replica
            **({"projection_ref": [ray.put(projection)]} if projection else {}),
        ),
        runtime_env=worker_runtime_env(),  # user modules from the working directory, even in a long-lived session
        resources=resources or None,  # pinned to the nodes that offer them
        **per_actor,
    )
    # Group the inputs (small) by shard, not the outputs (k values per position): then one actor
    # scores and writes each shard. Rows read in the driver are grouped here, one block per shard.
    dumper = VLLMShardDumper if cfg.engine == "vllm" else ShardDumper
    if inputs.rows is not None:
        written = _shard_blocks(inputs.rows, plan, todo).map_batches(dumper, batch_size=None, **pool)
    else:
        keyed = inputs.dataset.map_batches(_shard_rows, batch_format="numpy", fn_kwargs={"plan": plan, "todo": todo})
        written = keyed.groupby("shard").map_groups(dumper, **pool)
    # Shards reach the driver as their actors finish them: shards written / total, positions/s, ETA.
    sequence = bool(shards.layout.inputs)
    progress = Progress(
        int(todo.sum()), "shard", "dump", ("tokens read", "positions stored") if sequence else ("samples",)
    )
    infos = []
    for row in written.iter_rows():
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        tokens = row.pop("tokens_read")
        infos.append(ShardInfo(**row))
        progress.update(*((tokens, infos[-1].num_positions) if sequence else (infos[-1].num_samples,)))
    return infos


class ShardDumper(TeacherScorer):
    """Teacher and writer of whole shards (a Ray Data actor): map_groups hands it every row of one
    shard; it scores them in batches of `batch_size` rows of similar length, each cut to its longest
    row (trainer.teacher.batching), and writes the shard in id order. So the teacher sees the same
    batches whatever the number of workers or a resume, and each finished shard is on disk at once
    (a crash loses only the shards in flight)."""

    def __init__(self, *, batch_size: int, shards: ShardWriter, expected_counts: np.ndarray, **scorer) -> None:
        super().__init__(**scorer)
        self.batch_size, self.shards, self.expected_counts = batch_size, shards, expected_counts

    def __call__(self, group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.init_error is not None:
            raise self.init_error
        order = np.argsort(group["id"], kind="stable")
        group = {key: value[order] for key, value in group.items()}
        scored = in_id_order([self.score(trimmed(group, rows)) for rows in length_batches(group, self.batch_size)])
        info = self.shards.write(*self._shard(scored, group))
        tokens = int(group["length"].sum()) if "length" in group else len(group["id"])
        return {"tokens_read": np.array([tokens]), **{key: np.array([value]) for key, value in info.__dict__.items()}}

    def _shard(self, rows: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> tuple[int, ShardData]:
        """One whole shard (every sample of it, in id order, its positions flat) from its scored
        `rows` and its `inputs` (the dataset's rows, same order)."""
        shard = int(rows["shard"][0])
        if shard < 0 or len(rows["id"]) != int(self.expected_counts[shard]):
            raise DataError(
                "the dataset changed while it was being dumped (ids differ from the first pass): make the "
                "dataset deterministic"
            )
        extras = {name: rows[name] for name in EXTRAS if name in rows}
        if "sample_index" in extras:  # only as wide as the most distinct ids any position of this shard drew
            extras["sample_index"], extras["sample_count"] = trim_samples(
                extras["sample_index"], extras["sample_count"]
            )
        offsets = np.zeros(len(rows["id"]) + 1, dtype=np.int64)
        np.cumsum(rows["positions"], out=offsets[1:])
        tokens = _token_inputs(inputs, self.layout.index_dtype) if self.layout.inputs else None
        return shard, ShardData(
            sample_id=rows["id"].astype(np.int64),
            position_offsets=offsets,
            topk_index=rows["topk_index"],
            topk_logit=rows["topk_logit"].astype(np.float32, copy=False),
            logsumexp=rows["logsumexp"].astype(np.float32, copy=False),
            extras=extras,
            tokens=tokens,
        )


class VLLMShardDumper(ShardDumper, VLLMScorer):
    """A ShardDumper whose teacher runs in a vLLM engine (--engine vllm): the same batches, the same
    stored arrays, from vLLM's hidden states and the teacher's own output layer."""


def _engine_kwargs(cfg: DumpConfig) -> dict:
    if cfg.engine != "vllm":
        return {}
    return {
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size,
        "verbose": cfg.verbose,
    }


def _token_inputs(rows: dict[str, np.ndarray], index_dtype: str) -> TokenInputs:
    """The shard's samples' valid tokens and loss masks, flat (a mask of ones where the data has none)."""
    lengths = rows["length"].astype(np.int64)
    valid = np.arange(rows["input_ids"].shape[1]) < lengths[:, None]
    mask = rows["loss_mask"] if "loss_mask" in rows else valid
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenInputs(offsets, rows["input_ids"][valid].astype(index_dtype), mask[valid].astype(np.uint8))
