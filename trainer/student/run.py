"""A training run (jobs.train_student): open the stores and check the data against them
(trainer/student/stores.py), prepare the epoch's data, fit with Ray Train, write the outputs. The
teacher never runs."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import ray.data
import ray.train
import torch
from ray.data import ExecutionOptions
from ray.train.torch import TorchTrainer

import logitstore
from logitstore import StoreError
from logitstore.atomic import atomic_write_text
from logitstore.storage import open_storage
from trainer.errors import DataError, ModelError, RemoteError, TrainerError, is_process_death
from trainer.inputs.datasets import load_dataset
from trainer.inputs.specs import absolute_paths, worker_runtime_env
from trainer.options import parse_resources
from trainer.ray_env import cluster_cpus, cluster_gpus, ensure_ray, node_cpus, placement_problem, quiet_console
from trainer.student.batches import BatchOptions
from trainer.student.checkpoint import HISTORY_FILE, checkpoint_file
from trainer.student.config import StudentSettings, TrainConfig, log_sinks
from trainer.student.export import STUDENT_DIR, export_student, student_dir
from trainer.student.features import stored_features
from trainer.student.join import EpochClock, JoinSpec, batch_rows, join_with_store, store_batches
from trainer.student.loop import LoopConfig, train_loop_per_worker
from trainer.student.outputs import RunOutput
from trainer.student.progress_bar import DriverBar, DriverLines, ProgressBoard, wants_bar
from trainer.student.stores import RunStores, check_inputs, vocab_padding
from trainer.student.students import build_student
from trainer.student.timing import RunClock, run_timing

# What metrics.json reports of each student (the last epoch's figures).
SUMMARY_KEYS = (
    "eval_accuracy",
    "teacher_agreement",
    "eval_perplexity",
    "eval_kl_to_teacher",
    "eval_cross_entropy",
    "train_loss",
    "train_kd_loss",
    "train_ce_loss",
    "train_feature_loss",
)
RUN_NAME = "train"  # Ray Train's run directory under <output>/ray; the same name is what lets a rerun resume


def run_training(cfg: TrainConfig, *, inputs_checked: bool = False) -> dict:
    """Train the run's students; `inputs_checked` skips check_inputs (a sweep makes those passes
    over the data once for all its runs)."""
    clock = RunClock()
    ensure_ray()
    # One epoch = one execution: too noisy even with --verbose.
    ray.data.DataContext.get_current().enable_progress_bars = False
    clock.mark("ray_ready")
    stores = RunStores.open(cfg.data)
    cfg = cfg.with_store_temperature(stores.manifest)  # --temperature 0: 1 for token stores, 4 otherwise
    stores = stores.with_student_tokenizer(cfg)  # a student of another tokenizer (trainer/student/crosstok.py)
    if not inputs_checked:
        check_inputs(cfg, stores)
    clock.mark("inputs_checked")
    students = cfg.students()
    cpus, use_gpu = _cpus_per_worker(cfg), cluster_gpus() >= cfg.scale.workers
    resources = parse_resources(cfg.scale.worker_resources, "--worker-resources")[0]
    problem = placement_problem(resources, cpus, "--worker-resources", "training worker")
    if problem:
        raise DataError(problem)
    resolved = cfg.with_flags(cpus_per_worker=cpus)
    output = _prepare_output(cfg, resolved)
    datasets, loop = prepare_data(cfg, stores, students, cpus)
    clock.mark("fit_called")
    if wants_bar() or not cfg.progress.verbose:
        # A terminal: a bar on the driver instead of rank 0's lines; no terminal and no --verbose
        # (rank 0's output is not forwarded then): a line on the driver at each quarter of the run.
        board = ProgressBoard.remote()
        shown = replace(loop, progress_board=board, progress_lines=False)
        view = DriverBar if wants_bar() else DriverLines
        with view(board, loop.optimisation.total_steps):
            result = fit(cfg, datasets, shown, output, cpus, use_gpu)
    else:  # --verbose without a terminal: rank 0's lines every --log-every steps
        result = fit(cfg, datasets, loop, output, cpus, use_gpu)
    clock.mark("fit_returned")
    runtime = {"cpus_per_worker": cpus, "threads_per_worker": worker_threads(cfg, cpus), "use_gpu": use_gpu}
    return write_outputs(resolved, stores, students, result, output, runtime, clock)


# ---- 1. the workers' CPUs, and the output -------------------------------------------------------
def _cpus_per_worker(cfg: TrainConfig) -> float:
    return cpus_per_worker(cfg.scale.cpus_per_worker, cfg.scale.worker_resources, cfg.scale.workers)


def worker_threads(cfg: TrainConfig, cpus: float) -> int:
    """--threads-per-worker, else the CPUs a worker holds (at least 1)."""
    return cfg.scale.threads_per_worker or max(1, int(cpus))


def cpus_per_worker(given: float, worker_resources: str, workers: int) -> float:
    """`given`, or automatic: the cluster's CPUs but one shared by `workers` workers (the one left
    keeps the data pipeline going: workers that claim every CPU starve it), at most 4, and never
    more than the largest node a worker may run on has (a worker runs on one node)."""
    if given > 0:
        return given
    largest = max(node_cpus(parse_resources(worker_resources, "--worker-resources")[0]), default=1.0)
    return max(0.25, min(4.0, (cluster_cpus() - 1.0) / workers, largest))


def _prepare_output(cfg: TrainConfig, resolved: TrainConfig) -> RunOutput:
    """--output made ready: a finished run replaced with --overwrite; an unfinished one (its driver
    died) resumed by Ray Train from its latest checkpoint, but only by the same command."""
    output = RunOutput(cfg.output)
    if cfg.overwrite:
        output.remove(["metrics.json", "config.json", "checkpoint", "ray", "logs", "curves.png"])
    output.local.mkdir(parents=True, exist_ok=True)
    if output.exists("config.json") and output.exists("ray"):
        # (paths as this command resolves them: a run recorded before they were made absolute)
        previous = absolute_paths(json.loads(output.read_text("config.json")))
        differ = _differences(previous, resolved)
        if differ:
            raise DataError(
                f"--output {output} holds an unfinished run with other arguments (they differ in: "
                f"{', '.join(differ)}): "
                f"rerun that command to resume it, pass --overwrite to start over, or choose another --output"
            )
        if output.exists(f"ray/{RUN_NAME}/checkpoint_manager_snapshot.json"):  # Ray Train's record of checkpoints
            print(f"resuming the unfinished run in {output} from its latest registered checkpoint", file=sys.stderr)
        else:
            print(
                f"the unfinished run in {output} registered no checkpoint before it stopped: starting it over",
                file=sys.stderr,
            )
    # The resolved configuration, loadable again with --config.
    atomic_write_text(output.local / "config.json", json.dumps(resolved.to_dict(), indent=2) + "\n")
    output.publish("config.json")
    return output


def _differences(previous: dict, resolved: TrainConfig) -> list[str]:
    """The flags in which a run recorded in a config.json is another run than `resolved`: those of
    its identity (what may change on a resume does not count); a key an older version did not write
    had its default."""
    mine, defaults = resolved.identity(), TrainConfig().to_dict()
    free = defaults.keys() - mine.keys()
    keys = (previous.keys() - free) | mine.keys()
    return sorted(k for k in keys if previous.get(k, defaults.get(k)) != mine.get(k))


# ---- 2. prepare the data ------------------------------------------------------------------------
def prepare_data(
    cfg: TrainConfig, stores: RunStores, students: list[StudentSettings], cpus: float
) -> tuple[dict[str, ray.data.Dataset], LoopConfig]:
    """The training data in this run's order (joined with the store unless every student trains on
    labels only: then the store is never read), the eval data in id order, and the loop's config."""
    data, manifest = cfg.data, stores.manifest
    featured = any(s.feature_pairs for s in students)
    reads_store = featured or any(s.alpha > 0 for s in students)
    # The join carries one logsumexp column per temperature the students train at.
    temperatures = tuple(sorted({s.temperature for s in students})) if reads_store else ()
    # A fresh dataset: the epoch's order counts the executions of the dataset it is made from.
    clock = EpochClock.remote()  # the epoch a (restarted) worker group starts at: the join's orders follow it
    seed = cfg.training.seed
    spec = JoinSpec(
        data.store, manifest, temperatures, cfg.training.batch_size, seed, data.shuffle_window, clock,
        student_tokenizer=stores.cross.student_tokenizer if stores.cross else "", features=featured,
    )  # fmt: skip
    if data.dataset:
        datasets = {"train": join_with_store(load_dataset(data.dataset, "--dataset", stores.text), spec)}
    else:
        datasets = {"train": store_batches(spec)}
    # A store of views replays its own augmentation from the stored seeds (code the store names only
    # when --augment names it too); --augment alone (or a store of views read for labels only)
    # augments afresh every epoch.
    train = BatchOptions(
        manifest.selection.kind,
        temperatures,
        views=manifest.num_views if reads_store else 0,
        augment_spec=data.views_augment(manifest),
        seed=seed,
        features=featured,
    )
    eval_options = _eval_data(cfg, stores, datasets)
    loop = LoopConfig(
        students=tuple(students),
        epochs=cfg.training.epochs,
        seed=seed,
        threads=worker_threads(cfg, cpus),
        train=train,
        eval=eval_options,
        eval_every=cfg.progress.eval_every,
        checkpoint_every=cfg.progress.checkpoint_every,
        checkpoint_every_steps=cfg.progress.checkpoint_every_steps,
        loss_chunk=cfg.training.loss_chunk,
        optimisation=cfg.optimisation(_total_steps(cfg, manifest.num_samples)),
        log_dir=open_storage(cfg.output).uri,  # absolute: workers do not run in this directory
        log_to=log_sinks(cfg.progress.log_to),
        log_every=cfg.progress.log_every,
        epoch_clock=clock,
        # The store, whose tokenizer each worker copies (checked) beside its checkpoints' exports.
        tokenizer_dir=open_storage(data.store).uri if stores.has_hf_tokenizer() else "",
        features=stored_features(data.store, manifest) if featured else None,
        merge_lora=cfg.distill.merge_lora,
        cross=stores.cross,
    )
    return datasets, loop


def _eval_data(cfg: TrainConfig, stores: RunStores, datasets: dict[str, ray.data.Dataset]) -> BatchOptions | None:
    """The eval data, in id order, put in `datasets` (labels alone, or joined with --eval-store); the
    options of its batches, or None without eval data."""
    data = cfg.data
    if not (data.eval_dataset or data.eval_store):
        return None
    eval_ds = load_dataset(data.eval_dataset, "--eval-dataset", stores.eval_text) if data.eval_dataset else None
    if stores.eval_manifest is None:
        datasets["eval"] = batch_rows(eval_ds, data.eval_batch_size)
        return BatchOptions(stores.manifest.selection.kind, ())
    m = stores.eval_manifest
    t = 1.0 if 1.0 in m.temperatures else m.temperatures[0]
    eval_spec = JoinSpec(data.eval_store, m, (t,), data.eval_batch_size, cfg.training.seed, 0)
    datasets["eval"] = store_batches(eval_spec) if eval_ds is None else join_with_store(eval_ds, eval_spec)
    return BatchOptions(m.selection.kind, (t,))


def _total_steps(cfg: TrainConfig, samples: int) -> int:
    """The run's optimiser steps on each worker, for per-step schedules (batches are split evenly
    over the workers; the join's windows can add a batch or two, which the schedules tolerate)."""
    batches = max(1, -(-samples // cfg.training.batch_size) // cfg.scale.workers)
    return cfg.training.epochs * -(-batches // cfg.training.grad_accum)


# ---- 3. fit ---------------------------------------------------------------------------------------
def _ordered() -> ExecutionOptions:
    """Batches in the order the (seeded) join made, not in the order tasks happen to finish."""
    options = copy.copy(ray.data.DataContext.get_current().execution_options)
    options.preserve_order = True
    return options


# How often Ray Train's controller polls the workers (Ray's default: 2 s). A worker's report waits
# for that poll when the previous one is still queued, and the end of the run is only seen at the
# next poll: with short epochs that was ~0.6 s per epoch and ~2 s at the end. A user's own value wins.
POLL_INTERVAL_ENV = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def _train_worker(config: dict) -> None:
    """A training worker: the loop, whose exceptions are sorted for the controller. A process or node
    that died (is_process_death) is Ray Train's to recover from (--max-failures); any other exception
    was raised by Python code (ours, the user's, a bug) and would be raised again: it leaves as a
    RemoteError, which ends the run at once (StopOnRemoteError), reported by the driver alone."""
    try:
        train_loop_per_worker(config)
    except Exception as exc:
        if is_process_death(exc):
            raise
        rank = ray.train.get_context().get_world_rank()
        error = RemoteError.wrap(exc, f"training worker {rank}", (StoreError, TrainerError))
        quiet_console("ray.train")  # Ray Train would log it here with its traceback: the driver reports it
        raise error from None


class StopOnRemoteError(ray.train.UserCallback):
    """On Ray Train's controller: a worker's RemoteError ends the run at once (the controller does not
    retry a callback's error), unless a worker died too, which Ray Train restarts the workers for."""

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        errors = [worker_exceptions[rank] for rank in sorted(worker_exceptions)]
        remote = [e for e in errors if isinstance(e, RemoteError)]
        if remote and not any(is_process_death(e) for e in errors if not isinstance(e, RemoteError)):
            quiet_console("ray.train")  # the controller would log the error twice: the driver reports it
            raise remote[0]


def fit(
    cfg: TrainConfig,
    datasets: dict[str, ray.data.Dataset],
    loop: LoopConfig,
    output: RunOutput,
    cpus: float,
    use_gpu: bool,
):
    os.environ.setdefault(*POLL_INTERVAL_ENV)  # Ray Train passes it from the driver to its controller
    resources = parse_resources(cfg.scale.worker_resources, "--worker-resources")[0]
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"loop": loop},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scale.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus, **resources}
        ),
        datasets=datasets,
        # Only "train" is split across workers; rank 0 evaluates the whole eval set.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=_ordered()),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=output.storage_path,  # on object storage when --output is: checkpoints outlive nodes
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.scale.max_failures),
            worker_runtime_env=worker_runtime_env(),
            callbacks=[StopOnRemoteError()],
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.ControllerError as exc:
        if isinstance(exc.controller_failure, RemoteError):
            raise exc.controller_failure from None
        raise
    if result.checkpoint is None:
        raise ModelError(f"training finished without a checkpoint; see the Ray logs under {output.storage_path}")
    return result


# ---- 4. write the outputs -------------------------------------------------------------------------
def write_outputs(
    cfg: TrainConfig,
    stores: RunStores,
    students: list[StudentSettings],
    result,
    output: RunOutput,
    runtime: dict,
    clock: RunClock,
) -> dict:
    """The final checkpoint beside the metrics, each student exported from it (trainer/student/export.py:
    re-loading its weights checks that they are sound), then metrics.json, written last."""
    final = output.local / "checkpoint"
    shutil.rmtree(final, ignore_errors=True)
    with result.checkpoint.as_directory() as src:
        shutil.copytree(src, final, ignore=shutil.ignore_patterns(f"{STUDENT_DIR}*"))  # exported below
    history = json.loads((final / HISTORY_FILE).read_text())
    results = []
    m = stores.manifest
    tokenizer = stores.tokenizer_dir()
    for i, s in enumerate(students):
        weights = final / checkpoint_file(i, len(students))
        model = build_student(s, pretrained=False)  # the weights are the checkpoint's
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        exported = export_student(model, student_dir(output.local, i, len(students)), tokenizer, cfg.distill.merge_lora)
        last = history[-1] if len(students) == 1 else history[-1]["students"][i]
        results.append(
            {
                **({"variant": s.to_dict()} if len(students) > 1 else {}),
                **{key: last.get(key) for key in SUMMARY_KEYS},
                "checkpoint": _published(output, weights),
                "exported": _published(output, exported),
            }
        )
    metrics = {
        **(results[0] if len(students) == 1 else {"students": results}),
        **vocab_padding(stores, students, history),
        "epochs": history,
        "store": {
            "path": open_storage(cfg.data.store).uri,
            "teacher": m.teacher,
            "top_k": m.top_k,
            "temperatures": list(m.temperatures),
        },
        # wall_seconds, startup_seconds, epochs_seconds, overhead (trainer/student/timing.py)
        **run_timing(clock.marks, history, time.time()),
        "config": cfg.to_dict(),
        "runtime": runtime,
        "logitstore_version": logitstore.__version__,
    }
    atomic_write_text(output.local / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    exports = [student_dir(output.local, i, len(students)).name for i in range(len(students))]
    output.publish("checkpoint", *exports, "metrics.json")  # object storage: metrics.json last, as locally
    return metrics


def _published(output: RunOutput, path: Path) -> str:
    """Where `path` (in the staging directory) is once published."""
    return f"{output.uri}/{path.relative_to(output.local).as_posix()}" if output.uri else str(path)
