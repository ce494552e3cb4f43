"""Where rank 0's step and epoch metrics go, one class per sink (torchtune's metric_logging shape):
each takes `log(scalars, step, row)` and `close()`. Made by `make_sinks` from --log-to, under
<output>/logs/ (a staging directory for an output on object storage: trainer/student/logs.py
uploads it as it grows)."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path
from typing import Protocol

STEPS_CSV = "steps.csv"
STEP_FIELDS = ("step", "epoch", "loss", "kd", "ce", "feature", "lr", "positions_per_s")


class Sink(Protocol):
    def log(self, scalars: dict[str, float], step: int, row: dict | None) -> None:
        """`scalars` by name ("train/loss", "epoch/eval_accuracy"...) at `step`; `row` is the step's
        row of figures (None for an epoch's)."""

    def close(self) -> None: ...


class CsvSink:
    """steps.csv: one row per logged optimiser step (epochs are in metrics.json); a restarted
    rank 0 appends to it."""

    def __init__(self, logs: Path) -> None:
        path = logs / STEPS_CSV
        new = not path.exists()
        self.file = open(path, "a", newline="")  # noqa: SIM115 (closed in close())
        self.writer = csv.DictWriter(self.file, fieldnames=STEP_FIELDS, extrasaction="ignore")
        if new:
            self.writer.writeheader()

    def log(self, scalars: dict[str, float], step: int, row: dict | None) -> None:
        if row is not None:
            self.writer.writerow(row)
            self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    """TensorBoard event files (tensorboardX writes them; tensorboard reads them)."""

    def __init__(self, logs: Path) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(logs / "tensorboard"))

    def log(self, scalars: dict[str, float], step: int, row: dict | None) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowSink:
    """An MLflow run in a local file store under logs/mlruns."""

    def __init__(self, logs: Path) -> None:
        import mlflow

        mlflow.set_tracking_uri((logs / "mlruns").resolve().as_uri())
        mlflow.start_run()
        self.mlflow = mlflow

    def log(self, scalars: dict[str, float], step: int, row: dict | None) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class WandbSink:
    """A Weights & Biases run, offline under logs/wandb/ unless the user's environment says
    otherwise (WANDB_MODE=online with a login): a cluster's workers often cannot reach the service,
    and nothing is sent by surprise. A restarted worker continues the run it began (its id kept
    beside the run's files)."""

    def __init__(self, logs: Path, name: str) -> None:
        import wandb

        id_file = logs / "wandb" / "run-id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:12])
        self.run = wandb.init(
            dir=str(logs),
            id=id_file.read_text().strip(),
            resume="allow",
            project=os.environ.get("WANDB_PROJECT", "logitstore"),
            name=name or None,
            mode=os.environ.get("WANDB_MODE", "offline"),
        )

    def log(self, scalars: dict[str, float], step: int, row: dict | None) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def make_sinks(names: tuple[str, ...], logs: Path, run_name: str) -> list[Sink]:
    """The sinks --log-to names (validated by the run's config), in that order."""
    makers = {
        "csv": lambda: CsvSink(logs),
        "tensorboard": lambda: TensorBoardSink(logs),
        "mlflow": lambda: MlflowSink(logs),
        "wandb": lambda: WandbSink(logs, run_name),
    }
    return [makers[name]() for name in names]
