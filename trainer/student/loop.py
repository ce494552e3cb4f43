"""The training loop each Ray Train worker runs. Reads top to bottom: build, then epochs of steps."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from trainer.student import checkpoint
from trainer.student.batches import Batch, BatchOptions, make_batch
from trainer.student.config import Optimisation, StudentSettings
from trainer.student.crosstok import CrossTokenizer
from trainer.student.evaluate import evaluate
from trainer.student.features import StoredFeatures
from trainer.student.logs import StepLog, say
from trainer.student.students import Student


@dataclass(frozen=True)
class LoopConfig:
    """What every worker of a run needs (run.py makes it once, on the driver)."""

    students: tuple[StudentSettings, ...]
    epochs: int
    seed: int
    threads: int  # torch threads per worker
    train: BatchOptions  # selection, temperature columns, views, augmentation (by spec) of the training data
    eval: BatchOptions | None  # None: no eval data
    eval_every: int  # 0: after the last epoch only
    checkpoint_every: int  # epochs
    checkpoint_every_steps: int  # 0: off
    loss_chunk: int = 0  # positions per chunk of the loss and eval (0: auto, by the vocabulary)
    optimisation: Optimisation = Optimisation()
    log_dir: str = ""  # the run's output directory (rank 0 writes logs/ there)
    log_to: tuple[str, ...] = ()
    log_every: int = 0  # 0: no progress lines or step metrics
    epoch_clock: Any = None  # the join's EpochClock (trainer/student/join.py), or None
    progress_board: Any = None  # a ProgressBoard the driver draws a bar from (a terminal), or None
    progress_lines: bool = True  # rank 0 prints progress lines (no bar: CI logs)
    # the store whose tokenizer files go beside each checkpoint's export (each worker copies them;
    # "": none)
    tokenizer_dir: str = ""
    features: StoredFeatures | None = None  # the store's teacher features' layers and projection (--feature-map)
    merge_lora: bool = False  # LoRA students' exports: the merged model, the adapter beside it
    cross: CrossTokenizer | None = None  # students of another tokenizer than the store's


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _per_student(totals: torch.Tensor, featured: list[bool]) -> list[dict]:
    """Mean loss, KD and CE (and the feature loss of students with --feature-map) per position, from
    each student's [loss, kd, ce, feature] * positions and positions."""
    out = []
    for t, with_features in zip(totals, featured):
        n = max(t[4].item(), 1.0)
        figures = {"train_loss": t[0].item() / n, "train_kd_loss": t[1].item() / n, "train_ce_loss": t[2].item() / n}
        if with_features:
            figures["train_feature_loss"] = t[3].item() / n
        out.append({**figures, "train_positions": int(t[4].item())})
    return out


def _epoch_metrics(epoch: int, steps: int, clock: dict[str, float], per_student: list[dict]) -> dict:
    return {
        "epoch": epoch + 1,
        "train_steps": steps,  # optimiser steps of this worker in this epoch (after a restart: those taken since)
        "epoch_seconds": clock["seconds"],  # this worker's training pass (data, forward, backward, step), not eval
        # Waiting for the epoch's first batch (the dataset's execution starting), part of epoch_seconds.
        "first_batch_seconds": clock["first_batch"],
        "started_at": clock["started_at"],  # wall clock (time.time()): where a run's time goes (run.py)
        # One student: its figures at the top level; several: a list in the order of --variants.
        **(per_student[0] if len(per_student) == 1 else {"students": per_student}),
    }


def _local_tokenizer(store: str) -> str:
    """A local copy of the store's tokenizer files, checked ("" for none)."""
    from logitstore import StoreReader

    return str(StoreReader(store).tokenizer_dir() or "") if store else ""


@dataclass
class Worker:
    """What one training worker holds through its run (built by `_build`)."""

    loop: LoopConfig
    rank: int
    device: torch.device
    students: list[Student]
    log: StepLog
    tokenizer: str  # a local copy of the store's tokenizer files, beside each export ("": none)
    history: list[dict]  # the epochs' metrics so far (restored on a restart)
    start_epoch: int
    skip_steps: int  # batches of start_epoch already trained on (a restart within an epoch)
    restarted: bool
    global_step: int  # optimiser steps so far (the logs' step axis)

    @property
    def sharded(self) -> bool:
        return self.loop.optimisation.strategy == "fsdp"


def train_loop_per_worker(config: dict) -> None:
    loop: LoopConfig = config["loop"]
    loop_started_at = time.time()
    worker = _build(loop)
    train_data = ray.train.get_dataset_shard("train")
    eval_data = ray.train.get_dataset_shard("eval") if loop.eval is not None else None
    for epoch in range(worker.start_epoch, loop.epochs):
        totals, steps, clock = _train_epoch(worker, train_data, epoch)
        # Metrics: summed over the workers; rank 0 evaluates every student when due.
        per_student = _per_student(_all_reduce_sum(totals), [s.feature_maps is not None for s in worker.students])
        last = epoch + 1 == loop.epochs
        if eval_data is not None and (last or (loop.eval_every and (epoch + 1) % loop.eval_every == 0)):
            _evaluate(worker, eval_data, per_student)
        metrics = _epoch_metrics(epoch, steps, clock, per_student)
        if epoch == worker.start_epoch:
            metrics["loop_started_at"] = loop_started_at  # this worker process's start of the loop
            metrics["output_widths"] = [student.width for student in worker.students]  # run.py: padded vocabularies
            if worker.restarted:  # with skip > 0 the train_* figures cover only the steps after it
                metrics["resumed_from"] = {"epoch": worker.start_epoch, "step": worker.skip_steps}
        # Report, with a checkpoint every `checkpoint_every` epochs and after the last.
        worker.history.append(metrics)
        worker.log.epoch(worker.global_step, {"epoch": epoch + 1, **(per_student[0] if per_student else {})})
        if worker.rank == 0:
            say(json.dumps(metrics))
        due = last or (epoch + 1) % loop.checkpoint_every == 0
        checkpoint.report(
            worker.students, worker.history, metrics, epoch=epoch + 1, step=0, checkpoint=due, final=last,
            tokenizer=worker.tokenizer,
        )  # fmt: skip
    worker.log.close()


def _build(loop: LoopConfig) -> Worker:
    """Every student from the same seed, restored from the latest checkpoint on a restart."""
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(loop.threads)
    students = [
        Student(
            s,
            seed=loop.seed,
            epochs=loop.epochs,
            loss_chunk=loop.loss_chunk,
            optimisation=loop.optimisation,
            stored_features=loop.features,
            merge_lora=loop.merge_lora,
            cross=loop.cross,
        )  # fmt: skip
        for s in loop.students
    ]
    total = loop.optimisation.total_steps
    log = StepLog(
        loop.log_dir, loop.log_to, loop.log_every, total, active=rank == 0, board=loop.progress_board,
        lines=loop.progress_lines,
    )  # fmt: skip
    state, history = checkpoint.restore(students)
    for i, student in enumerate(students):
        student.prepare(checkpoint.student_state(state, i))
    if loop.optimisation.strategy == "fsdp" and state is not None:
        checkpoint.restore_shards(students)
    start_epoch, skip_steps = (int(state["epoch"]), int(state["step"])) if state is not None else (0, 0)
    if state is not None and rank == 0:
        say(json.dumps({"resumed_from": {"epoch": start_epoch, "step": skip_steps}}))
    if loop.epoch_clock is not None:  # before the first batch: this execution of the data is epoch start_epoch
        ray.get(loop.epoch_clock.set.remote(start_epoch))
    return Worker(
        loop=loop, rank=rank, device=ray.train.torch.get_device(), students=students, log=log,
        tokenizer=_local_tokenizer(loop.tokenizer_dir), history=history, start_epoch=start_epoch,
        skip_steps=skip_steps, restarted=state is not None,
        # the optimiser steps before this process's first (a restart)
        global_step=start_epoch * total // loop.epochs + skip_steps // loop.optimisation.grad_accum,
    )  # fmt: skip


def _train_epoch(worker: Worker, train_data, epoch: int) -> tuple[torch.Tensor, int, dict[str, float]]:
    """One epoch: every --grad-accum batches feed one optimiser step of every student (a restart
    inside an epoch skips the batches it trained on: checkpoints fall between optimiser steps);
    -> each student's [loss, kd, ce, feature, positions] sums, the steps taken and the epoch's clock."""
    loop, students, accumulate = worker.loop, worker.students, worker.loop.optimisation.grad_accum
    skip = worker.skip_steps if epoch == worker.start_epoch else 0
    epoch_start, steps = time.perf_counter(), 0
    clock = {"started_at": time.time(), "first_batch": -1.0}
    totals = torch.zeros(len(students), 5, dtype=torch.float64)
    for student in students:
        student.model.train()
    pending: list[Batch] = []

    def step() -> None:
        nonlocal pending, steps, totals
        step_totals = torch.stack([student.step(pending) for student in students])
        totals += step_totals
        pending, steps, worker.global_step = [], steps + 1, worker.global_step + 1
        worker.log.step(worker.global_step, epoch + 1, step_totals[0].tolist(), students[0].last_lr)

    for row_number, row in enumerate(train_data.iter_batches(batch_size=1, batch_format="numpy"), start=1):
        if clock["first_batch"] < 0:
            clock["first_batch"] = time.perf_counter() - epoch_start
        if row_number <= skip:
            continue
        pending.append(make_batch(row, loop.train, epoch, worker.device))
        if len(pending) < accumulate:
            continue
        step()
        if loop.checkpoint_every_steps and (row_number // accumulate) % loop.checkpoint_every_steps == 0:
            at = {"epoch": epoch, "step": row_number}
            checkpoint.report(
                students, worker.history, at, epoch=epoch, step=row_number, checkpoint=True, tokenizer=worker.tokenizer
            )
    if pending:  # the epoch's last, shorter accumulation
        step()
    for student in students:
        student.end_epoch()
    clock["seconds"] = time.perf_counter() - epoch_start
    clock["first_batch"] = clock["seconds"] if clock["first_batch"] < 0 else clock["first_batch"]  # no batch
    return totals, steps, clock


def _evaluate(worker: Worker, eval_data, per_student: list[dict]) -> None:
    """Rank 0's eval of every student into `per_student` (FSDP: every rank runs the same eval
    batches, as the sharded forward needs them all; rank 0 reports)."""
    if worker.rank == 0 or worker.sharded:
        results = evaluate(worker.students, eval_data, worker.loop.eval, worker.device)
        if worker.rank == 0:
            for mine, result in zip(per_student, results):
                mine.update(result)
