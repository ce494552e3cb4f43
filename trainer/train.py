"""Ray Train glue for train_student: checks before spending compute, the TorchTrainer, the outputs."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

import ray.data
import ray.train
from ray.data import ExecutionOptions, RandomSeedConfig
import torch
from ray.train.torch import TorchTrainer

import logitstore
from logitstore import Manifest, StoreReader, read_manifest
from trainer.config import VARIANT_FIELDS, TrainConfig
from trainer.data import LM_SEQ_LEN, TextOptions, fingerprint_dataset, load_dataset
from trainer.errors import DataError, ModelError
from trainer.loop import HISTORY_FILE, checkpoint_file, train_loop_per_worker
from trainer.models import build_model, probe_width
from trainer.ray_env import cluster_cpus, cluster_gpus, ensure_ray
from trainer.specs import worker_runtime_env
from trainer.streaming import join_with_store


def check_store_matches(manifest: Manifest, ds, spec: str, store: str, flag: str) -> None:
    """The dataset must be exactly the data the store was dumped from (ids and inputs; labels may differ)."""
    fp = fingerprint_dataset(ds, spec)
    recorded = manifest.dataset
    if fp.ids_sha256 != recorded.get("ids_sha256"):
        raise DataError(
            f"{flag} {spec} does not match store {store}: the store covers {recorded.get('num_samples')} samples of "
            f"{recorded.get('spec')!r}, the dataset has {fp.num_samples} with other ids; pass the dataset the store was dumped from, or dump a store for this one"
        )
    if fp.inputs_sha256 != recorded.get("inputs_sha256"):
        raise DataError(
            f"{flag} {spec} does not match store {store}: same ids, but the inputs differ from those the teacher saw; "
            f"pass the dataset the store was dumped from, or dump the store again"
        )


def check_student_width(student: torch.nn.Module, ds, manifest: Manifest, spec: str) -> None:
    width = probe_width(student, ds.take_batch(2, batch_format="numpy"), "--student", spec)
    if width != manifest.vocab_size:
        raise ModelError(
            f"--student {spec} outputs {width} classes but the store's teacher has {manifest.vocab_size}: use a student with {manifest.vocab_size} outputs"
        )


# What metrics.json reports of each student (the last epoch's figures).
SUMMARY_KEYS = ("eval_accuracy", "teacher_agreement", "eval_perplexity", "eval_kl_to_teacher", "eval_cross_entropy",
                "train_loss", "train_kd_loss", "train_ce_loss")

RUN_NAME = "train"  # Ray Train's run directory under <output>/ray; the same name is what lets a rerun resume


def _check_unfinished_run(output: Path, resolved: dict) -> None:
    """An unfinished run in --output (its driver died) is resumed from its latest checkpoint by Ray
    Train, but only by the same command: other arguments would mix two runs in one checkpoint."""
    saved = output / "config.json"
    if not saved.is_file() or not (output / "ray").exists():
        return
    previous = json.loads(saved.read_text())
    ignore = {"overwrite", "max_failures"}
    differ = sorted(k for k in set(previous) | set(resolved) if k not in ignore and previous.get(k) != resolved.get(k))
    if differ:
        raise DataError(f"--output {output} holds an unfinished run with other arguments (they differ in: {', '.join(differ)}): "
                        f"rerun that command to resume it, pass --overwrite to start over, or choose another --output")
    if (output / "ray" / RUN_NAME / "checkpoint_manager_snapshot.json").is_file():  # Ray Train's record of registered checkpoints
        print(f"resuming the unfinished run in {output} from its latest registered checkpoint", file=sys.stderr)
    else:
        print(f"the unfinished run in {output} registered no checkpoint before it stopped: starting it over", file=sys.stderr)


def text_options(store: str, manifest: Manifest) -> TextOptions:
    """Tokenise and pack text exactly as the dump did: the store's own tokenizer and block length."""
    return TextOptions(StoreReader(store).tokenizer_json(), int(manifest.config.get("seq_len", LM_SEQ_LEN)))


def _cpus_per_worker(cfg: TrainConfig) -> float:
    if cfg.cpus_per_worker > 0:
        return cfg.cpus_per_worker
    # Leave one CPU for the data pipeline (read, join); workers that claim every CPU starve it.
    return max(0.25, min(4.0, (cluster_cpus() - 1.0) / cfg.workers))


def _ordered() -> ExecutionOptions:
    """Blocks in the order the (seeded) shuffles made, not in the order tasks happen to finish."""
    options = copy.copy(ray.data.DataContext.get_current().execution_options)
    options.preserve_order = True
    return options


def _eval_data(cfg: TrainConfig, manifest: Manifest, text: TextOptions) -> tuple[ray.data.Dataset, Manifest | None]:
    """The eval dataset, tokenised as its store was, and that store's manifest (None without --eval-store)."""
    if not cfg.eval_store:
        return load_dataset(cfg.eval_dataset, "--eval-dataset", text), None
    eval_manifest = read_manifest(cfg.eval_store)
    if eval_manifest.teacher.get("weights_sha256") != manifest.teacher.get("weights_sha256"):
        raise DataError(f"--eval-store {cfg.eval_store} was dumped by another teacher than --store {cfg.store}: dump both with the same teacher")
    eval_text = text_options(cfg.eval_store, eval_manifest)
    if eval_text.tokenizer_json != text.tokenizer_json:
        raise DataError(f"--eval-store {cfg.eval_store} was tokenised with another tokenizer than --store {cfg.store}: dump it with --tokenizer {Path(cfg.store) / 'tokenizer.json'}")
    return load_dataset(cfg.eval_dataset, "--eval-dataset", eval_text), eval_manifest


def check_inputs(cfg: TrainConfig) -> None:
    """The passes over the data that check it against the stores and every student's width."""
    manifest = read_manifest(cfg.store)
    text = text_options(cfg.store, manifest)
    train_ds = load_dataset(cfg.dataset, "--dataset", text)
    for spec in dict.fromkeys(s.student for s in cfg.students()):
        check_student_width(build_model(spec, "--student"), train_ds, manifest, spec)
    check_store_matches(manifest, train_ds, cfg.dataset, cfg.store, "--dataset")
    if cfg.eval_dataset:
        eval_ds, eval_manifest = _eval_data(cfg, manifest, text)
        if eval_manifest is not None:
            check_store_matches(eval_manifest, eval_ds, cfg.eval_dataset, cfg.eval_store, "--eval-dataset")


def run_training(cfg: TrainConfig, *, inputs_checked: bool = False) -> dict:
    """Train the run's students; `inputs_checked` skips check_inputs (a sweep makes those passes
    over the data once for all its runs)."""
    start = time.perf_counter()
    manifest = read_manifest(cfg.store)
    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False  # one epoch = one execution: too noisy
    if not inputs_checked:
        check_inputs(cfg)
    text = text_options(cfg.store, manifest)
    students = cfg.students()
    # The join carries one logsumexp column per temperature the students train at. Labels only
    # (alpha 0 for all) never reads the teacher's logits: the data alone, reshuffled each epoch.
    # Seeded shuffles in preserved order: a run's data order depends only on --seed. The dataset is
    # a fresh one: seeded shuffles count the executions of the dataset they derive from, so one
    # already iterated by the checks would start the sequence of orders further along.
    train_ds = load_dataset(cfg.dataset, "--dataset", text)
    temperatures = sorted({s.temperature for s in students})
    shuffle_seed = RandomSeedConfig(seed=cfg.seed, reseed_after_execution=True)
    reads_store = any(s.alpha > 0 for s in students)
    datasets = {"train": join_with_store(train_ds, cfg.store, temperatures, shuffle=True, seed=cfg.seed)
                if reads_store else train_ds.random_shuffle(seed=shuffle_seed)}
    # A store of views replays its own augmentation from the stored seeds; --augment alone (or a
    # store of views read for labels only) augments afresh every epoch.
    views = manifest.num_views if reads_store else 0
    augment = cfg.augment or (manifest.views["augment"] if manifest.views else "")
    eval_temperature = 1.0
    if cfg.eval_dataset:
        eval_ds, eval_manifest = _eval_data(cfg, manifest, text)
        if eval_manifest is not None:
            eval_temperature = 1.0 if 1.0 in eval_manifest.temperatures else eval_manifest.temperatures[0]
            eval_ds = join_with_store(eval_ds, cfg.eval_store, eval_temperature, shuffle=False)
        datasets["eval"] = eval_ds

    output = Path(cfg.output).resolve()
    if output.exists() and cfg.overwrite:
        for name in ("metrics.json", "config.json", "checkpoint", "ray"):
            target = output / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    cpus = _cpus_per_worker(cfg)
    use_gpu = cluster_gpus() >= cfg.workers
    resolved = {**cfg.to_dict(), "cpus_per_worker": cpus, "use_gpu": use_gpu}
    _check_unfinished_run(output, resolved)
    (output / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "students": [{**{k: getattr(s, k) for k in VARIANT_FIELDS}, "temperature_column": temperatures.index(s.temperature)}
                         for s in students],
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "seed": cfg.seed, "threads": max(1, int(cpus)),
            "selection": manifest.selection["kind"], "views": views, "augment": augment,
            "has_eval": "eval" in datasets, "eval_temperature": eval_temperature, "eval_batch_size": 256, "eval_every": cfg.eval_every,
            "checkpoint_every": cfg.checkpoint_every, "checkpoint_every_steps": cfg.checkpoint_every_steps,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}
        ),
        datasets=datasets,
        # Only "train" is split across workers; rank 0 evaluates the whole eval set.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=_ordered()),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=str(output / "ray"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env=worker_runtime_env(),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise ModelError(f"training finished without a checkpoint; see the Ray logs under {output / 'ray'}")

    # The final checkpoint, copied next to the metrics and re-loaded as a check that it is sound.
    final = output / "checkpoint"
    shutil.rmtree(final, ignore_errors=True)
    with result.checkpoint.as_directory() as src:
        shutil.copytree(src, final)
    history = json.loads((final / HISTORY_FILE).read_text())
    results = []
    for i, s in enumerate(students):
        weights = final / checkpoint_file(i, len(students))
        build_model(s.student, "--student").load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        last = history[-1] if len(students) == 1 else history[-1]["students"][i]
        results.append({
            **({"variant": {k: getattr(s, k) for k in VARIANT_FIELDS}} if len(students) > 1 else {}),
            **{key: last.get(key) for key in SUMMARY_KEYS},
            "checkpoint": str(weights),
        })
    metrics = {
        **(results[0] if len(students) == 1 else {"students": results}),
        "epochs": history,
        "store": {"path": str(Path(cfg.store).resolve()), "teacher": manifest.teacher, "top_k": manifest.top_k,
                  "temperatures": manifest.temperatures},
        "wall_seconds": time.perf_counter() - start,
        "config": resolved,
        "logitstore_version": logitstore.__version__,
    }
    tmp = output / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, output / "metrics.json")
    return metrics


def main_body(cfg: TrainConfig) -> None:
    metrics = run_training(cfg)
    print(f"training complete: {cfg.output}", file=sys.stderr)
    for i, result in enumerate(metrics.get("students", [metrics])):
        if "variant" in result:
            print(f"student {i}: {json.dumps(result['variant'])}")
        for key in SUMMARY_KEYS:
            if result[key] is not None and key != "eval_cross_entropy":  # e.g. no perplexity for a classifier, no agreement without --eval-store
                print(f"{key:18s} {result[key]:.4f}")
    print(f"{'wall_seconds':18s} {metrics['wall_seconds']:.1f}")
