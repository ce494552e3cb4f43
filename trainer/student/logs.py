"""Rank 0's view of a run while it trains: a progress line with step, epoch, loss, positions/s and
ETA every --log-every optimiser steps (Ray forwards it to the driver's output: a CI log; in a
terminal the driver draws a bar instead, from what rank 0 posts to a ProgressBoard:
trainer/student/progress_bar.py), and the
same figures as step-level metrics in the run's sinks under <output>/logs/: steps.csv, TensorBoard
event files (tensorboardX writes them; tensorboard reads them), an MLflow run in a local file store
(when mlflow is installed), a Weights & Biases run (when wandb is installed; offline under
logs/wandb/ unless WANDB_MODE says otherwise: `wandb sync` uploads it later). jobs.train_student
draws curves.png from them at the end."""

from __future__ import annotations

import sys
import time

from trainer.student.sinks import Sink, make_sinks


def say(text: str, stream=None) -> None:
    """One line to the worker's stdout (or `stream`), written once. Not `print`: Ray Train 2.60
    patches a worker's print to go to its logger as well as to the stream, so every printed line
    reached the driver twice."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class StepLog:
    """Progress and step-level metrics of student 0 (the first of --variants; every student's epoch
    figures are in metrics.json). Inactive on ranks other than 0."""

    def __init__(
        self,
        directory: str,
        sinks: tuple[str, ...],
        every: int,
        total_steps: int,
        *,
        active: bool,
        board=None,
        lines: bool = True,
    ) -> None:
        self.active, self.every, self.total = active and every > 0, every, max(total_steps, 1)
        self.board = board if active else None  # the driver's bar reads it (None: no bar)
        self.lines = lines
        self.posted_at, self.posted_positions = time.perf_counter(), 0.0
        self.done = 0  # optimiser steps taken in this process (ETA: from this process's rate)
        self.start = self.last_time = time.perf_counter()
        self.positions = 0.0
        self.sinks: list[Sink] = []
        if not self.active:
            return
        from trainer.student.outputs import RunOutput

        # On object storage logs/ are made in a staging directory and uploaded as they grow; a
        # restarted rank 0 continues the logs there (steps.csv, the W&B run id).
        self.output = RunOutput(directory)
        self.output.fetch("logs")
        self.logs = self.output.local / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.sinks = make_sinks(sinks, self.logs, self.output.name)

    def step(self, global_step: int, epoch: int, figures: list[float], lr: float) -> None:
        """After optimiser step `global_step` (from 1) of epoch `epoch` (from 1): figures = student 0's
        [loss, kd, ce, feature] (each times the positions) and positions of that step."""
        if self.board is not None:
            self._post(global_step, epoch, figures)
        if not self.active:
            return
        self.done += 1
        self.positions += figures[4]
        if global_step % self.every:
            return
        now = time.perf_counter()
        n = max(figures[4], 1.0)
        row = {
            "step": global_step,
            "epoch": epoch,
            "loss": figures[0] / n,
            "kd": figures[1] / n,
            "ce": figures[2] / n,
            "feature": figures[3] / n,
            "lr": lr,
            "positions_per_s": self.positions / max(now - self.last_time, 1e-9),
        }
        self.positions, self.last_time = 0.0, now
        eta = (now - self.start) / self.done * (self.total - global_step)
        feature = f" feature {row['feature']:.4f}" if figures[3] else ""
        text = (
            f"epoch {epoch} step {global_step}/{self.total} loss {row['loss']:.4f} kd {row['kd']:.4f} "
            f"ce {row['ce']:.4f}{feature} lr {lr:.3g} {row['positions_per_s']:,.0f} positions/s ETA {_duration(eta)}"
        )
        if self.lines:
            say(text, sys.stderr)
        self._write(row, global_step)

    def _post(self, global_step: int, epoch: int, figures: list[float]) -> None:
        """The step to the driver's bar, at most 4 times a second (a call to an actor, not awaited)."""
        now = time.perf_counter()
        self.posted_positions += figures[4]
        if now - self.posted_at < 0.25 and global_step < self.total:
            return
        self.board.post.remote(
            {
                "step": global_step,
                "total": self.total,
                "epoch": epoch,
                "loss": figures[0] / max(figures[4], 1.0),
                "positions_per_s": self.posted_positions / max(now - self.posted_at, 1e-9),
            }
        )
        self.posted_at, self.posted_positions = now, 0.0

    def epoch(self, global_step: int, metrics: dict) -> None:
        """An epoch's figures (train means, eval metrics) into the sinks at `global_step`."""
        if self.active:
            self._write({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, global_step, prefix="epoch/")
            self._upload()

    def _upload(self) -> None:
        self.output.publish("logs")

    def _write(self, row: dict, step: int, prefix: str = "train/") -> None:
        scalars = {f"{prefix}{k}": float(v) for k, v in row.items() if k != "step" and v is not None}
        for sink in self.sinks:
            sink.log(scalars, step, row if prefix == "train/" else None)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        if self.active:
            self._upload()
