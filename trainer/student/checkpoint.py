"""A run's checkpoints (Ray Train): each student's weights (loadable with weights_only=True), the
optimisers' and schedules' states, where in training it was taken, and the metrics so far.
Each checkpoint also holds every student exported as the run's output is (trainer/student/export.py:
`student/`, `save_pretrained` for a Hugging Face student), so any checkpoint loads with plain
transformers. Under --strategy fsdp every rank adds its shards (trainer/student/fsdp.py), and the
whole weights (model.pt and the export) are gathered only for the final checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import ray.train
import torch

from trainer.student.export import export_student, student_dir
from trainer.student.students import Student

CHECKPOINT_FILE = "model.pt"  # the student's weights (state_dict)
STATE_FILE = "train_state.pt"  # optimiser and schedule states, epoch and step: what a restart needs
HISTORY_FILE = "history.json"


def checkpoint_file(student: int, students: int) -> str:
    """A student's weights in a checkpoint: model.pt alone, or model-<i>.pt for one of several."""
    return CHECKPOINT_FILE if students == 1 else f"model-{student}.pt"


def _sharded(students: list[Student]) -> bool:
    # trainer.student.fsdp is imported only then: its DTensor imports cost every process that
    # loads this module (Ray Train's controller and each worker) ~0.6 s.
    return students[0].opt.strategy == "fsdp"


def restore(students: list[Student]) -> tuple[dict | None, list[dict]]:
    """Weights (into the plain models: DDP; FSDP students load their shards after sharding, see
    restore_shards), the training state and the history from the latest checkpoint when this run
    is a restart (a worker died, or the same command was rerun after the driver died); (None, []) otherwise."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, []
    with checkpoint.as_directory() as path:
        if not _sharded(students):
            for i, student in enumerate(students):
                weights = os.path.join(path, checkpoint_file(i, len(students)))
                student.module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)
        with open(os.path.join(path, HISTORY_FILE)) as fh:
            history = json.load(fh)
    return state, history


def restore_shards(students: list[Student]) -> None:
    """FSDP: this rank's shards of the weights and optimiser states, into the sharded students."""
    from trainer.student import fsdp  # (lazily: see _sharded)

    context = ray.train.get_context()
    with ray.train.get_checkpoint().as_directory() as path:
        fsdp.load_shards(students, path, context.get_world_rank(), context.get_world_size())


def report(
    students: list[Student],
    history: list[dict],
    metrics: dict,
    *,
    epoch: int,
    step: int,
    checkpoint: bool,
    final: bool = False,
    tokenizer: str = "",
) -> None:
    """ray.train.report from every worker; with `checkpoint`, rank 0 attaches one taken after
    `epoch` epochs and `step` more optimiser steps, with each student exported beside the store's
    `tokenizer` files (a directory, or "": none) (FSDP: every rank attaches its shards, and only
    the `final` one holds the whole weights and the export)."""
    if not checkpoint:
        ray.train.report(metrics)
        return
    context = ray.train.get_context()
    rank, sharded = context.get_world_rank(), _sharded(students)
    with tempfile.TemporaryDirectory() as tmp:
        weights = [student.module.state_dict() for student in students] if not sharded else None
        if sharded:
            from trainer.student import fsdp

            fsdp.save_shards(students, tmp, rank, context.get_world_size())
            weights = [fsdp.full_weights(student.model) for student in students] if final else None
        if rank == 0:
            for i, state_dict in enumerate(weights or []):
                torch.save(state_dict, os.path.join(tmp, checkpoint_file(i, len(students))))
            if not sharded:  # (FSDP: the driver exports the final checkpoint's gathered weights)
                for i, student in enumerate(students):
                    export_student(
                        student.module, student_dir(Path(tmp), i, len(students)), _dir(tokenizer), student.merge_lora
                    )
            states = [student.state() for student in students]
            torch.save(
                {
                    "optimizers": [state["optimizer"] for state in states],
                    "schedules": [state["schedule"] for state in states],
                    "feature_maps": [state["feature_maps"] for state in states],
                    "epoch": epoch,
                    "step": step,
                },
                os.path.join(tmp, STATE_FILE),
            )
            with open(os.path.join(tmp, HISTORY_FILE), "w") as fh:
                json.dump(history, fh)
        attached = ray.train.Checkpoint.from_directory(tmp) if rank == 0 or sharded else None
        ray.train.report(metrics, checkpoint=attached)


def _dir(path: str) -> Path | None:
    return Path(path) if path else None


def student_state(state: dict | None, index: int) -> dict | None:
    """Student `index`'s optimiser and schedule states in a restored training state."""
    if state is None:
        return None
    maps = state.get("feature_maps") or [None] * len(state["schedules"])  # (older checkpoints have none)
    return {"optimizer": state["optimizers"][index], "schedule": state["schedules"][index], "feature_maps": maps[index]}
