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
from trainer.student.evaluate import evaluate
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


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _per_student(totals: torch.Tensor) -> list[dict]:
    """Mean loss, KD and CE per position, from each student's [loss, kd, ce] * positions and positions."""
    return [
        {
            "train_loss": t[0].item() / max(t[3].item(), 1.0),
            "train_kd_loss": t[1].item() / max(t[3].item(), 1.0),
            "train_ce_loss": t[2].item() / max(t[3].item(), 1.0),
            "train_positions": int(t[3].item()),
        }
        for t in totals
    ]


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


def train_loop_per_worker(config: dict) -> None:
    loop: LoopConfig = config["loop"]
    loop_started_at = time.time()
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.set_num_threads(loop.threads)

    # Build: every student from the same seed, restored from the latest checkpoint on a restart.
    students = [
        Student(s, seed=loop.seed, epochs=loop.epochs, loss_chunk=loop.loss_chunk, optimisation=loop.optimisation)
        for s in loop.students
    ]
    accumulate = loop.optimisation.grad_accum
    total = loop.optimisation.total_steps
    log = StepLog(
        loop.log_dir,
        loop.log_to,
        loop.log_every,
        total,
        active=rank == 0,
        board=loop.progress_board,
        lines=loop.progress_lines,
    )
    tokenizer = _local_tokenizer(loop.tokenizer_dir)
    state, history = checkpoint.restore(students)
    for i, student in enumerate(students):
        student.prepare(checkpoint.student_state(state, i))
    sharded = loop.optimisation.strategy == "fsdp"
    if sharded and state is not None:
        checkpoint.restore_shards(students)
    start_epoch, skip_steps = (int(state["epoch"]), int(state["step"])) if state is not None else (0, 0)
    if state is not None and rank == 0:
        say(json.dumps({"resumed_from": {"epoch": start_epoch, "step": skip_steps}}))
    # The optimiser steps before this process's first (a restart): for the logs' step axis.
    global_step = start_epoch * total // loop.epochs + skip_steps // accumulate
    if loop.epoch_clock is not None:  # before the first batch: this execution of the data is epoch start_epoch
        ray.get(loop.epoch_clock.set.remote(start_epoch))
    train_data = ray.train.get_dataset_shard("train")
    eval_data = ray.train.get_dataset_shard("eval") if loop.eval is not None else None

    for epoch in range(start_epoch, loop.epochs):
        # Train: every --grad-accum batches feed one optimiser step of every student (a restart
        # inside an epoch skips the batches it trained on: checkpoints fall between optimiser steps).
        skip, epoch_start, steps = skip_steps if epoch == start_epoch else 0, time.perf_counter(), 0
        clock = {"started_at": time.time(), "first_batch": -1.0}
        totals = torch.zeros(len(students), 4, dtype=torch.float64)
        for student in students:
            student.model.train()
        pending: list[Batch] = []
        for row_number, row in enumerate(train_data.iter_batches(batch_size=1, batch_format="numpy"), start=1):
            if clock["first_batch"] < 0:
                clock["first_batch"] = time.perf_counter() - epoch_start
            if row_number <= skip:
                continue
            pending.append(make_batch(row, loop.train, epoch, device))
            if len(pending) < accumulate:
                continue
            step_totals = torch.stack([student.step(pending) for student in students])
            totals += step_totals
            pending, steps, global_step = [], steps + 1, global_step + 1
            log.step(global_step, epoch + 1, step_totals[0].tolist(), students[0].last_lr)
            if loop.checkpoint_every_steps and (row_number // accumulate) % loop.checkpoint_every_steps == 0:
                at = {"epoch": epoch, "step": row_number}
                checkpoint.report(
                    students, history, at, epoch=epoch, step=row_number, checkpoint=True, tokenizer=tokenizer
                )
        if pending:  # the epoch's last, shorter accumulation
            step_totals = torch.stack([student.step(pending) for student in students])
            totals += step_totals
            steps, global_step = steps + 1, global_step + 1
            log.step(global_step, epoch + 1, step_totals[0].tolist(), students[0].last_lr)
        for student in students:
            student.end_epoch()
        clock["seconds"] = time.perf_counter() - epoch_start
        clock["first_batch"] = clock["seconds"] if clock["first_batch"] < 0 else clock["first_batch"]  # no batch

        # Metrics: summed over the workers; rank 0 evaluates every student when due.
        per_student = _per_student(_all_reduce_sum(totals))
        last = epoch + 1 == loop.epochs
        # (FSDP: every rank runs the same eval batches, as the sharded forward needs them all; rank 0 reports.)
        due_eval = last or (loop.eval_every and (epoch + 1) % loop.eval_every == 0)
        if (rank == 0 or sharded) and eval_data is not None and due_eval:
            results = evaluate(students, eval_data, loop.eval, device)
            if rank == 0:
                for mine, result in zip(per_student, results):
                    mine.update(result)
        metrics = _epoch_metrics(epoch, steps, clock, per_student)
        if epoch == start_epoch:
            metrics["loop_started_at"] = loop_started_at  # this worker process's start of the loop
            metrics["output_widths"] = [student.width for student in students]  # run.py: padded vocabularies
        if state is not None and epoch == start_epoch:
            # This epoch began from a restart; with skip > 0 the train_* figures cover only the steps after it.
            metrics["resumed_from"] = {"epoch": start_epoch, "step": skip_steps}

        # Report, with a checkpoint every `checkpoint_every` epochs and after the last.
        history.append(metrics)
        log.epoch(global_step, {"epoch": epoch + 1, **(per_student[0] if per_student else {})})
        if rank == 0:
            say(json.dumps(metrics))
        due = last or (epoch + 1) % loop.checkpoint_every == 0
        checkpoint.report(
            students,
            history,
            metrics,
            epoch=epoch + 1,
            step=0,
            checkpoint=due,
            final=last,
            tokenizer=tokenizer,
        )
    log.close()
